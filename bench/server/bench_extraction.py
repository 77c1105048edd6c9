"""Hidden-state extraction throughput: Lamina over HTTP vs the engine alone vs transformers.

Standalone (not part of pytest):

    VLLM_TARGET_DEVICE=cpu python bench/server/bench_extraction.py [--prompts 128]

Model: a random-weight Llama of ~82M parameters (12 layers, hidden 768, 12 heads,
MLP 1920; built locally by ``tests/tiny_model.py``). Prompts: random token ids,
~50 tokens each. Measured for float32 and bfloat16:

* transformers ``output_hidden_states=True``, one prompt at a time and in batches of 32;
* the engine alone (``VllmHiddenStateEngine.extract`` in-process, no HTTP), all prompts
  submitted at once, then one prompt per call at concurrency 8 and 32 (as the HTTP rows);
* ``POST /v1/hidden_states`` (one prompt per request, layer -2, pooling last) against
  ``python -m lamina_server`` at concurrency 1, 8 and 32, with p50/p99 latency.

Prints one table; ratios are against transformers one-prompt-at-a-time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # test models
from tiny_model import TinyModelSpec, ensure_tiny_model

SPEC = TinyModelSpec(
    arch="llama",
    layers=12,
    hidden=768,
    heads=12,
    kv_heads=12,
    intermediate=1920,
    vocab=512,
    max_positions=1024,
)


@dataclass
class Row:
    path: str
    dtype: str
    tokens_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None


def make_prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        [1, *rng.integers(3, SPEC.vocab, size=int(rng.integers(45, 56))).tolist()] for _ in range(n)
    ]


def bench_transformers(path: Path, prompts: list[list[int]], dtype: str) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    tdtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=tdtype)
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
    tokens = sum(len(p) for p in prompts)
    rows = []
    with torch.inference_mode():
        model(torch.tensor([prompts[0]]), output_hidden_states=True)  # warm-up
        t = time.perf_counter()
        for p in prompts:
            out = model(torch.tensor([p]), output_hidden_states=True)
            _ = out.hidden_states[-2][0, -1].float().numpy()
        rows.append(
            Row("transformers, 1 prompt at a time", dtype, tokens / (time.perf_counter() - t))
        )
        t = time.perf_counter()
        for i in range(0, len(prompts), 32):
            batch = prompts[i : i + 32]
            width = max(len(p) for p in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, p in enumerate(batch):  # right padding; last real token is read
                ids[j, : len(p)] = torch.tensor(p)
                mask[j, : len(p)] = 1
            out = model(ids, attention_mask=mask, output_hidden_states=True)
            last = mask.sum(1) - 1
            _ = out.hidden_states[-2][torch.arange(len(batch)), last].float().numpy()
        rows.append(Row("transformers, batches of 32", dtype, tokens / (time.perf_counter() - t)))
    del model
    return rows


def engine_args(path: Path, dtype: str) -> list[str]:
    return [
        "--model",
        str(path),
        "--dtype",
        dtype,
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "64",
        "--max-num-batched-tokens",
        "2048",
        "--kv-cache-memory-bytes",
        str(1 << 30),
        "--disable-uvicorn-access-log",
    ]


ENGINE_ALL = "engine alone (no HTTP), all at once"


def bench_engine_alone(
    path: Path, prompts: list[list[int]], dtype: str, repeats: int = 1
) -> list[Row]:
    """In a child process (vLLM's engine start-up wants a __main__ guard).

    All prompts in one ``extract`` call, then one prompt per call from 8 and 32
    concurrent callers: what the HTTP rows do, without HTTP (so their gap to these
    rows is the HTTP layer's cost, and the gap between these rows the concurrency's).
    """
    code = (
        "import sys, json; from bench_extraction import _engine_alone_main; "
        "_engine_alone_main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, str(path), dtype, json.dumps(prompts), str(repeats)],
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("TOKENS_PER_S ")]
    if not lines:
        raise RuntimeError(f"engine benchmark failed:\n{out.stderr[-3000:]}")
    rows = [Row(ENGINE_ALL, dtype, float(v)) for _, c, v in lines if c == "all"]
    rows += [
        Row(f"engine alone, concurrency {c}", dtype, float(v)) for _, c, v in lines if c != "all"
    ]
    return rows


def _engine_alone_main(path: str, dtype: str, prompts: list[list[int]], repeats: int = 1) -> None:
    from lamina_server.engine import WORKER_EXTENSION, VllmHiddenStateEngine, apply_cpu_plan
    from lamina_server.metrics import Metrics
    from prometheus_client import CollectorRegistry
    from vllm.config.model import ModelDType
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    apply_cpu_plan(path, kv_cache_given=True)  # what ``python -m lamina_server`` does

    async def run() -> None:
        args = AsyncEngineArgs(
            model=path,
            dtype=cast(ModelDType, dtype),  # float32 or bfloat16, from --dtypes
            max_model_len=512,
            max_num_seqs=64,
            max_num_batched_tokens=2048,
            kv_cache_memory_bytes=1 << 30,
            enforce_eager=True,
            worker_extension_cls=WORKER_EXTENSION,
        )
        llm = AsyncLLM.from_engine_args(args)
        try:
            engine = await VllmHiddenStateEngine.create(llm, Metrics(CollectorRegistry()))
            layer = engine.facts.num_layers - 2
            await engine.extract(prompts[:8], [layer], "last")  # warm-up
            tokens = sum(len(p) for p in prompts)

            async def all_at_once() -> None:
                await engine.extract(prompts, [layer], "last")

            async def one_by_one(concurrency: int) -> None:
                queue = list(reversed(prompts))

                async def worker() -> None:
                    while queue:
                        await engine.extract([queue.pop()], [layer], "last")

                await asyncio.gather(*[worker() for _ in range(concurrency)])

            for label, run_once in (
                ("all", all_at_once),
                ("8", lambda: one_by_one(8)),
                ("32", lambda: one_by_one(32)),
            ):
                rates = []
                for _ in range(repeats):  # noisy machine: the median run
                    t = time.perf_counter()
                    await run_once()
                    rates.append(tokens / (time.perf_counter() - t))
                print("TOKENS_PER_S", label, statistics.median(rates), flush=True)
        finally:
            llm.shutdown()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_http(path: Path, prompts: list[list[int]], dtype: str, repeats: int = 1) -> list[Row]:
    import httpx

    port = free_port()
    log = open(f"/tmp/lamina-bench-{dtype}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_server", *engine_args(path, dtype), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
            time.sleep(1)

        async def run(concurrency: int) -> Row:
            # aiohttp (installed with vLLM) rather than httpx: the client shares this
            # machine's cores with the server, and httpx's per-request CPU cost was
            # measured at ~10% of the server's throughput at concurrency 32 on 2 cores.
            import aiohttp

            latencies: list[float] = []
            queue: asyncio.Queue[list[int]] = asyncio.Queue()
            for p in prompts:
                queue.put_nowait(p)
            connector = aiohttp.TCPConnector(limit=concurrency)
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

                async def post(body: dict[str, object]) -> None:
                    async with client.post("/v1/hidden_states", json=body) as r:
                        r.raise_for_status()
                        await r.read()

                async def worker() -> None:
                    while not queue.empty():
                        p = queue.get_nowait()
                        t0 = time.perf_counter()
                        await post({"prompts": [p], "layers": [-2], "pooling": "last"})
                        latencies.append(time.perf_counter() - t0)

                await post({"prompts": prompts[:4]})  # warm-up
                t = time.perf_counter()
                await asyncio.gather(*[worker() for _ in range(concurrency)])
                elapsed = time.perf_counter() - t
            tokens = sum(len(p) for p in prompts)
            lat = sorted(latencies)
            return Row(
                f"Lamina HTTP, concurrency {concurrency}",
                dtype,
                tokens / elapsed,
                statistics.median(lat) * 1000,
                lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
            )

        rows = []
        for c in (1, 8, 32):
            # The machine is noisy: with repeats, the run of median throughput.
            runs = sorted(
                (asyncio.run(run(c)) for _ in range(repeats)), key=lambda r: r.tokens_per_s
            )
            rows.append(runs[len(runs) // 2])
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--skip", default="", help="comma list of: transformers,engine,http")
    p.add_argument(
        "--repeats", type=int, default=1, help="runs per engine/HTTP row; the median is shown"
    )
    a = p.parse_args()
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    skip = set(filter(None, a.skip.split(",")))
    path = ensure_tiny_model(SPEC)
    prompts = make_prompts(a.prompts)
    n_tokens = sum(len(x) for x in prompts)
    print(
        f"model {path} ({SPEC.layers} layers, hidden {SPEC.hidden}); "
        f"{len(prompts)} prompts, {n_tokens} tokens; {os.cpu_count()} CPUs",
        flush=True,
    )
    rows: list[Row] = []

    def progress(new: list[Row]) -> None:
        rows.extend(new)
        for r in new:
            print(f"  {r.path}, {r.dtype}: {r.tokens_per_s:.0f} tokens/s", flush=True)

    for dtype in a.dtypes.split(","):
        if "transformers" not in skip:
            progress(bench_transformers(path, prompts, dtype))
        if "engine" not in skip:
            progress(bench_engine_alone(path, prompts, dtype, a.repeats))
        if "http" not in skip:
            progress(bench_http(path, prompts, dtype, a.repeats))

    base = {r.dtype: r.tokens_per_s for r in rows if r.path.startswith("transformers, 1")}
    engine = {r.dtype: r.tokens_per_s for r in rows if r.path == ENGINE_ALL}
    print()
    head = f"| {'path':40} | {'dtype':8} | {'tokens/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} "
    head += "| vs HF 1-by-1 | vs engine |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        p50 = f"{r.p50_ms:7.1f}" if r.p50_ms is not None else " " * 7
        p99 = f"{r.p99_ms:7.1f}" if r.p99_ms is not None else " " * 7
        vs_hf = f"{r.tokens_per_s / base[r.dtype]:12.2f}x" if r.dtype in base else " " * 13
        vs_engine = f"{r.tokens_per_s / engine[r.dtype]:8.2f}x" if r.dtype in engine else " " * 9
        print(
            f"| {r.path:40} | {r.dtype:8} | {r.tokens_per_s:9.0f} | {p50} | {p99} "
            f"|{vs_hf} |{vs_engine} |"
        )


if __name__ == "__main__":
    main()
