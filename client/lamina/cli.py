"""The ``lamina`` command.

A subcommand is one ``add_<name>`` function that registers its options and the
function running it (see :data:`SUBCOMMANDS`). Exit codes: 0 done, 2 the command
line or an input file needs fixing, 1 the server or the network failed (its message
printed, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm  # type: ignore[import-untyped]

from . import files, leases, startstop
from ._version import __version__
from .align import METHODS, SCALINGS, AlignmentError
from .align_map import AlignmentMap, MapFileError
from .align_sources import FILE_SUFFIXES, Deployment, Source, collect, describe, parse_source
from .alignment import fit_alignment
from .client import Client
from .cost import cost_rows, is_month, render_csv, render_table
from .deployment import Kubectl, connect, for_deployment
from .errors import LaminaError
from .wire import DTYPES, POOLINGS, Prompt

URL_ENV = "LAMINA_URL"
API_KEY_ENV = "LAMINA_API_KEY"


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2)."""


# What a subcommand's run function gets besides its arguments (tests pass a transport).
Run = Callable[[argparse.Namespace, httpx.BaseTransport | None], int]


def parse_layers(text: str) -> int | list[int]:
    """``-2`` is one layer (arrays without a layers axis), ``-2,-4`` several."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes integers separated by commas, e.g. -2,-4, not {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("--layers needs at least one layer")
    return values[0] if len(values) == 1 and "," not in text else values


LAYER_OPTIONS = ("--layers", "--source-layers", "--target-layers")


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    # argparse (before 3.13) takes "-2,-4" for an option name; "--layers=-2,-4" is
    # unambiguous.
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in LAYER_OPTIONS and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _open(
    server: str | Deployment, timeout: float, transport: httpx.BaseTransport | None
) -> Client:
    """A client of a URL or an LLMDeployment (API key from the environment)."""
    api_key = os.environ.get(API_KEY_ENV) or None
    if isinstance(server, Deployment):
        return for_deployment(
            server.name,
            server.namespace,
            context=server.context,
            api_key=api_key,
            timeout=timeout,
            transport=transport,
        )
    return Client(server, api_key=api_key, timeout=timeout, transport=transport)


def _client(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> Client:
    if args.deployment:
        deployment = Deployment(args.deployment, args.namespace, args.context)
        return _open(deployment, args.timeout, transport)
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise UsageError(f"say which server: --url URL (or {URL_ENV}) or --deployment NAME")
    return _open(url, args.timeout, transport)


# -- hidden-states -----------------------------------------------------------------


def add_hidden_states(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "hidden-states",
        help="hidden states of prompts, saved to .npy or .safetensors",
        description="Ask a Lamina server for the hidden states of prompts and save them. "
        ".npy holds [prompts, hidden] for one layer or [prompts, layers, hidden] for "
        "several; .safetensors holds layer.<L> = [prompts, hidden], or with --pooling all "
        "prompt.<i>.layer.<L> = [tokens, hidden].",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", help=f"server base URL (default: ${URL_ENV})")
    target.add_argument("--deployment", "-d", metavar="NAME", help="an LLMDeployment's name")
    p.add_argument("--namespace", "-n", default="default", help="the LLMDeployment's namespace")
    p.add_argument("--context", help="kubectl context (with --deployment)")
    _add_prompt_options(p)
    p.add_argument(
        "--layers",
        type=parse_layers,
        default=-2,
        help="layer or comma list, e.g. -2,-4 (default -2)",
    )
    p.add_argument("--pooling", choices=POOLINGS, default="last", help="(default last)")
    p.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="bfloat16 is saved as float32"
    )
    p.add_argument("--output", "-o", required=True, help="out.npy or out.safetensors")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not a TTY"
    )
    p.set_defaults(run=run_hidden_states)


def _prompts(args: argparse.Namespace) -> list[Prompt]:
    """Prompts from the arguments or ``--file`` (possibly none)."""
    if args.file and args.prompts:
        raise UsageError("give prompts as arguments or with --file, not both")
    if args.file:
        stdin = sys.stdin.read() if args.file == "-" else None
        return files.read_prompts(args.file, stdin)
    return list(args.prompts)


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="prompts (or use --file)")
    p.add_argument(
        "--file",
        "-f",
        help='prompts file: .txt one per line, .jsonl strings or {"prompt": ...}; - = stdin',
    )


def run_hidden_states(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    prompts = _prompts(args)
    if not prompts:
        raise UsageError("no prompts: give them as arguments or with --file")
    files.check_output(args.output, args.pooling)

    show = args.progress or sys.stderr.isatty()
    with (
        _client(args, transport) as client,
        tqdm(total=len(prompts), unit="prompt", file=sys.stderr, disable=not show) as bar,
    ):
        result = client.hidden_states(
            prompts, args.layers, args.pooling, dtype=args.dtype, progress=bar.update
        )
        info = client.info()
    layers = [args.layers] if isinstance(args.layers, int) else args.layers
    metadata = {
        "model": info.model,
        "layers": json.dumps(layers),
        "pooling": args.pooling,
        "dtype": args.dtype,
        "engine_dtype": info.engine_dtype or "",
        "num_prompts": str(len(prompts)),
    }
    files.write(args.output, result, args.layers, args.pooling, metadata)
    print(f"{len(prompts)} prompts, {_shape(result)} -> {args.output}")
    return 0


def _shape(result: Any) -> str:
    if isinstance(result, list):
        hidden = result[0].shape[-1]
        lead = "" if result[0].ndim == 2 else f"{result[0].shape[0]}, "
        return f"{len(result)} arrays of [{lead}tokens, {hidden}] {result[0].dtype}"
    return f"[{', '.join(map(str, result.shape))}] {result.dtype}"


# -- up / down / run ---------------------------------------------------------------


def _add_deployment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the LLMDeployment's name")
    p.add_argument("--namespace", "-n", default="default", help="its namespace")
    p.add_argument("--context", help="kubectl context")


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=startstop.DEFAULT_WAIT_TIMEOUT,
        help="seconds to wait for a ready pod (default %(default)g)",
    )


def _deployment(args: argparse.Namespace) -> startstop.Deployment:
    return startstop.Deployment(args.name, args.namespace, context=args.context)


def add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "up",
        help="start a suspended (or scaled-to-zero) LLMDeployment",
        description="Un-suspend an LLMDeployment, at one replica or more; it stays up "
        "until `lamina down`, even after jobs started with `lamina run` end.",
    )
    _add_deployment_args(p)
    p.add_argument("--wait", action="store_true", help="wait until a pod is ready")
    _wait_args(p)
    p.set_defaults(run=run_up)


def run_up(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    startstop.up(_deployment(args), wait=args.wait, timeout=args.timeout)
    print(f"llmd/{args.name} up" + (" and ready" if args.wait else ""))
    return 0


def add_down(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "down",
        help="suspend an LLMDeployment (pods stop; Service and settings stay)",
        description="Suspend an LLMDeployment. Refused while `lamina run` jobs hold it, "
        "unless --force.",
    )
    _add_deployment_args(p)
    p.add_argument("--force", action="store_true", help="even while jobs hold it")
    p.set_defaults(run=run_down)


def run_down(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    try:
        startstop.down(_deployment(args), force=args.force)
    except leases.InUse as e:
        raise UsageError(str(e)) from None
    print(f"llmd/{args.name} suspended")
    return 0


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "run",
        help="start an LLMDeployment, run a command, put it back",
        description="Start the LLMDeployment if needed, wait until it is ready, run "
        f"COMMAND with {URL_ENV} set to its URL (a port-forward outside the cluster), and "
        "put the deployment back as it was when COMMAND ends, fails or is interrupted. "
        "Jobs that share a deployment keep it up until the last one ends; a job that "
        "dies without ending stops counting after --lease seconds.",
        usage="lamina run NAME [options] -- COMMAND [ARG...]",
    )
    _add_deployment_args(p)
    _wait_args(p)
    p.add_argument(
        "--lease",
        type=float,
        default=startstop.DEFAULT_LEASE.total_seconds(),
        help="seconds a crashed job keeps the deployment up (renewed while alive; "
        "default %(default)g)",
    )
    # main() cuts COMMAND off at "--" (argparse would take the job's options for ours).
    p.set_defaults(run=run_run, command=[])


def run_run(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    command: list[str] = args.command
    if not command:
        raise UsageError("say what to run after --, e.g. lamina run my-llm -- python job.py")
    if args.lease < 10:
        raise UsageError("--lease must be at least 10 seconds (it is renewed every third)")
    lease = datetime.timedelta(seconds=args.lease)
    deployment = _deployment(args)
    job = _Job(command)
    # SIGTERM (a CI cancel, kill) must put the deployment back like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, job.on_sigterm)
    try:
        with startstop.hold(deployment, lease=lease, timeout=args.timeout):
            url, stop = connect(
                args.name,
                args.namespace,
                port=None,
                kubectl="kubectl",
                context=args.context,
                environ=os.environ,
            )
            try:
                return job.run(
                    {
                        **os.environ,
                        URL_ENV: url,
                        "LAMINA_DEPLOYMENT": args.name,
                        "LAMINA_NAMESPACE": args.namespace,
                    }
                )
            finally:
                if stop is not None:
                    stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Job:
    """The command of ``lamina run``. SIGTERM to us goes on to it once it runs (before,
    it interrupts the wait); Ctrl-C reaches it directly, as it shares our terminal."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def on_sigterm(self, signum: int, frame: object) -> None:
        if self.process is None:
            raise KeyboardInterrupt
        self.process.terminate()

    def run(self, env: Mapping[str, str]) -> int:
        try:
            self.process = subprocess.Popen(self.command, env=env)
        except OSError as e:
            raise UsageError(f"cannot run {self.command[0]!r}: {e.strerror}") from None
        while True:
            try:
                code = self.process.wait()
            except KeyboardInterrupt:
                continue  # the job got the same SIGINT; its exit code says what it did
            return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as shells say


# -- cost --------------------------------------------------------------------------


def parse_month(text: str) -> str:
    if not is_month(text):
        raise argparse.ArgumentTypeError(f"--month takes YYYY-MM, e.g. 2026-10, not {text!r}")
    return text


def add_cost(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "cost",
        help="accelerator-hours and cost of LLMDeployments, as a table or CSV",
        description="Accelerator-hours (GPU-hours, or pod-hours on CPU), cost so far, the "
        "month's projection and budget of every LLMDeployment with spec.cost, read from "
        "its status.cost with kubectl. Months are calendar months in UTC; the operator "
        "keeps the current one and the 12 before it.",
        epilog="examples:\n"
        "  lamina cost -n research\n"
        "  lamina cost -A --month 2026-10 --csv > october.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", help="one namespace (default: kubectl's current)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="every namespace")
    p.add_argument(
        "--month", type=parse_month, help="a finished month, YYYY-MM (default: the current one)"
    )
    p.add_argument("--csv", action="store_true", help="CSV with a header, full precision")
    p.add_argument("--context", help="kubectl context")
    p.set_defaults(run=run_cost)


def run_cost(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    kubectl = Kubectl(context=args.context)
    rows = cost_rows(kubectl.get_all("llmd", args.namespace, args.all_namespaces), args.month)
    if args.csv:
        sys.stdout.write(render_csv(rows))
    elif rows:
        print(render_table(rows))
    else:
        month = f" for {args.month}" if args.month else ""
        print(
            f"no LLMDeployment with cost figures{month}: set spec.cost (see README)",
            file=sys.stderr,
        )
    return 0


# -- align -------------------------------------------------------------------------

FROM_HELP = (
    "a server URL (http://…), a .npy/.safetensors file written by `lamina hidden-states`, "
    "or an LLMDeployment: NAME (in --namespace) or NAMESPACE/NAME"
)
FIT_EXAMPLE = """example:
  lamina align fit --source research/llama-3-1-8b --target research/qwen-2-5-7b \
      --layers -4,-3,-2 --pooling mean --method procrustes -f anchors.txt \\
      -o llama-to-qwen.safetensors
  lamina align fit --source llama.npy --target qwen.npy -o map.safetensors   # saved vectors
"""


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected positive numbers separated by commas, e.g. 1e-4,1e-2,1, not {text!r}"
        )
    return values


def add_align(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "align",
        help="fit a W-Matrix between two models' hidden states; apply it",
        description="Fit a linear map (W-Matrix) from one model's hidden states onto "
        "another's from shared anchor prompts, and apply saved maps.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit a map and print its held-out metrics next to baselines",
        description="Collect the hidden states of the same anchor prompts from two sources, "
        "fit a map on most of them (ridge with λ by cross-validation, or orthogonal "
        "Procrustes), and report it on the held-out rest next to the identity, zero-map and "
        "shuffled-pairs baselines. Writes the map as safetensors (with its metadata).",
        epilog=FIT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("--source", "-s", required=True, metavar="FROM", help=FROM_HELP)
    fit.add_argument("--target", "-t", required=True, metavar="FROM", help="as --source")
    fit.add_argument(
        "--namespace", "-n", default="default", help="namespace of LLMDeployments named bare"
    )
    fit.add_argument("--context", help="kubectl context (for LLMDeployments)")
    _add_prompt_options(fit)
    fit.add_argument(
        "--layers",
        type=parse_layers,
        default=-2,
        help="layer, or comma list concatenated (e.g. -4,-3,-2), for both sides (default -2)",
    )
    fit.add_argument("--source-layers", type=parse_layers, help="the source's, if different")
    fit.add_argument("--target-layers", type=parse_layers, help="the target's, if different")
    fit.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="last",
        help="(default last; all pairs tokens and needs one tokenizer)",
    )
    fit.add_argument("--method", choices=METHODS, default="ridge", help="(default ridge)")
    fit.add_argument(
        "--no-center", dest="center", action="store_false", help="do not subtract the means"
    )
    fit.add_argument(
        "--scale",
        choices=SCALINGS,
        default="global",
        help="divide each side by its RMS vector length (global), per coordinate "
        "(feature), or not (default global)",
    )
    fit.add_argument(
        "--holdout", type=float, default=0.2, help="share of anchors held out (default 0.2)"
    )
    fit.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    fit.add_argument(
        "--lambdas",
        type=parse_floats,
        help="ridge grid, multiples of the mean eigenvalue of XᵀX (default 1e-6 … 100)",
    )
    fit.add_argument("--seed", type=int, default=0, help="of the held-out split (default 0)")
    fit.add_argument("--source-revision", default="", help="recorded in the map")
    fit.add_argument("--target-revision", default="", help="recorded in the map")
    fit.add_argument("--output", "-o", required=True, help="the map: out.safetensors")
    fit.add_argument("--json", action="store_true", help="print the report as JSON")
    fit.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    fit.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not a TTY"
    )
    fit.set_defaults(run=run_align_fit)

    apply = actions.add_parser(
        "apply",
        help="map saved source vectors into the target's space",
        description="Apply a map written by `lamina align fit` to vectors written by "
        "`lamina hidden-states` from the map's source model (its layers and pooling).",
        epilog="example:\n  lamina align apply llama-to-qwen.safetensors llama.npy -o in-qwen.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("map", help="a map written by `lamina align fit`")
    apply.add_argument("input", help="source vectors: .npy or .safetensors")
    apply.add_argument("--output", "-o", required=True, help="out.npy or out.safetensors")
    apply.set_defaults(run=run_align_apply)


def run_align_fit(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    prompts = _prompts(args)
    if not args.output.endswith(".safetensors"):
        raise UsageError(f"--output must end in .safetensors, not {args.output!r}")
    files.check_output(args.output, "last")
    sides = [
        parse_source(text, args.namespace, args.context) for text in (args.source, args.target)
    ]
    servers = sum(1 for s in sides if isinstance(s, str | Deployment))
    if servers and not prompts:
        raise UsageError("no prompts: give the anchor prompts as arguments or with --file")
    show = args.progress or sys.stderr.isatty()
    with (
        contextlib.ExitStack() as stack,
        tqdm(total=servers * len(prompts), unit="prompt", file=sys.stderr, disable=not show) as bar,
    ):
        opened: list[Source] = [
            stack.enter_context(_open(s, args.timeout, transport))
            if isinstance(s, str | Deployment)
            else s
            for s in sides
        ]
        result = fit_alignment(
            opened[0],
            opened[1],
            prompts or None,
            layers=args.layers,
            source_layers=args.source_layers,
            target_layers=args.target_layers,
            pooling=args.pooling,
            method=args.method,
            center=args.center,
            scale=args.scale,
            holdout=args.holdout,
            folds=args.folds,
            lambdas=args.lambdas,
            seed=args.seed,
            source_revision=args.source_revision,
            target_revision=args.target_revision,
            progress=bar.update,
        )
    result = dataclasses.replace(result, source=describe(sides[0]), target=describe(sides[1]))
    result.save(args.output)
    if args.json:
        print(json.dumps({**result.to_dict(), "output": args.output}, indent=2))
    else:
        print(f"{result.table()}\nmap -> {args.output}")
    return 0


def run_align_apply(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    wmap = AlignmentMap.load(args.map)
    facts = wmap.facts
    if not args.input.endswith(FILE_SUFFIXES):
        raise UsageError(f"the input must be a .npy or .safetensors file, not {args.input!r}")
    suffix = files.check_output(args.output, facts.pooling)
    given = collect(Path(args.input), None, facts.source.layers, facts.pooling)
    if given.rows.shape[1] != wmap.input_size:
        raise UsageError(
            f"{args.input} holds vectors of {given.rows.shape[1]} values, but the map takes "
            f"{wmap.input_size} ({list(facts.source.layers)} of {facts.source.model or '?'}, "
            f"{facts.source.hidden_size} each): write them with the map's model and layers"
        )
    mapped = wmap.apply(given.rows)
    metadata = {
        "map": Path(args.map).name,
        "model": facts.target.model,
        "layers": json.dumps(list(facts.target.layers)),
        "pooling": facts.pooling,
        "source_model": facts.source.model,
    }
    if facts.pooling == "all":
        starts = np.cumsum((0, *given.tokens))
        tensors = {
            f"prompt.{i}.mapped": np.ascontiguousarray(mapped[a:b])
            for i, (a, b) in enumerate(itertools.pairwise(starts))
        }
        save_file(tensors, args.output, metadata=metadata)
    elif suffix == ".npy":
        np.save(args.output, mapped)
    else:
        save_file({"mapped": mapped}, args.output, metadata=metadata)
    print(
        f"{len(given.tokens)} prompts, [{len(mapped)}, {wmap.input_size}] -> "
        f"[{len(mapped)}, {wmap.output_size}] -> {args.output}"
    )
    return 0


# -- the command -------------------------------------------------------------------

SUBCOMMANDS = [add_hidden_states, add_up, add_down, add_run, add_cost, add_align]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina", description="Work with Lamina hidden-state servers."
    )
    parser.add_argument("--version", action="version", version=f"lamina {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``lamina`` with ``argv`` (default: the process's); ``transport`` replaces the
    network (tests). Returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if argv[:1] == ["run"] and "--" in argv:
        argv, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    try:
        args = parser.parse_args(_attach_negative_values(argv))
        if command is not None:
            args.command = command
        run: Run = args.run
        return run(args, transport)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    except (UsageError, files.InputError, AlignmentError, MapFileError) as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 2
    except LaminaError as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # writing the output
        print(f"lamina: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
