"""W-Matrix fitting at scale: lamina's ridge-CV and Procrustes against numpy's own solvers.

    python bench/align/bench_align.py [--anchors 10000] [--hidden 4096]

Data: ``X`` of ``anchors × hidden`` (an offset and a decaying spectrum, like hidden
states) and ``Y = X R + noise`` with a random orthogonal ``R``, float64. Each case runs
in its own process, in ``--repeats`` interleaved rounds (the fastest run is kept: the
machine is shared), and reports wall time and peak memory above its inputs (the
process's peak RSS, reset after loading them: numpy's LAPACK workspaces are plain
``malloc`` that tracemalloc does not see), and how far the fitted map is from ``R``.

Baselines in the same run: ``numpy.linalg.lstsq(X, Y)`` (one least-squares solve, no
regularisation, no cross-validation) for ridge, and ``U Vᵀ`` from
``numpy.linalg.svd(XᵀY)`` for Procrustes. Then ``lamina.align.align`` end to end as
``lamina align fit`` runs it: 20 % held out, the shuffled-pairs fit, all metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client"))

from lamina import align as A  # noqa: E402

CASES: dict[str, str] = {
    "numpy-lstsq": "numpy lstsq (1 solve, no λ)",
    "lamina-ridge": "lamina ridge: 5-fold CV × 17 λ + refit",
    "numpy-svd": "numpy SVD of XᵀY → U Vᵀ",
    "lamina-procrustes": "lamina Procrustes",
    "lamina-align-ridge": "lamina align() ridge, end to end",
    "lamina-align-procrustes": "lamina align() Procrustes, end to end",
}
BASELINE = {"lamina-ridge": "numpy-lstsq", "lamina-procrustes": "numpy-svd"}


def make_data(anchors: int, hidden: int, out: Path) -> None:
    """X, Y and R as .npy files in ``out`` (generated in chunks: few temporaries)."""
    rng = np.random.default_rng(0)
    q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    rotation = q * np.sign(np.diag(r))
    spread = np.geomspace(3.0, 0.05, hidden)
    # numpy's stub leaves open_memmap unannotated: give it the type it returns here.
    open_memmap: Callable[..., np.memmap[Any, np.dtype[np.float64]]] = np.lib.format.open_memmap
    x = open_memmap(out / "x.npy", "w+", np.float64, (anchors, hidden))
    y = open_memmap(out / "y.npy", "w+", np.float64, (anchors, hidden))
    for start in range(0, anchors, 1000):
        rows = rng.standard_normal((min(1000, anchors - start), hidden)) * spread + 1.0
        x[start : start + len(rows)] = rows
        y[start : start + len(rows)] = rows @ rotation + 0.01 * rng.standard_normal(rows.shape)
    x.flush()
    y.flush()
    np.save(out / "r.npy", rotation)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Linux resets VmHWM (peak RSS) on ``5 > /proc/self/clear_refs``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _run(case: str, x: Any, y: Any) -> Any:
    """The weight each case fits."""
    if case == "numpy-lstsq":
        return np.linalg.lstsq(x, y, rcond=None)[0]
    if case == "lamina-ridge":
        groups = np.arange(len(x))
        return A.fit_ridge(x, [y], groups, 5, A.DEFAULT_LAMBDAS, seed=0)[0].core
    if case == "numpy-svd":
        u, _, vt = np.linalg.svd(x.T @ y)
        return u @ vt
    if case == "lamina-procrustes":
        return A.fit_procrustes(x, [y])[0].core
    method: A.Method = "ridge" if case == "lamina-align-ridge" else "procrustes"
    return A.align(x, y, options=A.Options(method=method)).map.weight


def child(case: str, data: Path) -> None:
    """One case in this process: prints its JSON line."""
    x, y, rotation = (np.load(data / f"{n}.npy") for n in ("x", "y", "r"))
    inputs = _status_kib("VmRSS")
    exact = _reset_peak()
    started = time.perf_counter()
    weight = _run(case, x, y)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0]  # other work on the machine slows every case down
    peak = _status_kib("VmHWM")
    error = float(np.linalg.norm(weight - rotation) / np.linalg.norm(rotation))
    print(
        json.dumps(
            {
                "case": case,
                "seconds": seconds,
                "peak_mib": max(0, peak - inputs) / 1024,
                "peak_exact": exact,
                "error": error,
                "load": load,
            }
        )
    )


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "?"
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
        "?",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--anchors", type=int, default=10000)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    p.add_argument("--repeats", type=int, default=2, help="rounds; each case keeps its fastest")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, Path(a.data))
        return
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    print(
        f"{a.anchors} anchors × {a.hidden} (float64, {a.anchors * a.hidden * 8 / 2**20:.0f} MiB "
        f"per side); {os.cpu_count()} CPUs, {cpu_model()}; numpy {np.__version__}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-align-") as tmp:
        make_data(a.anchors, a.hidden, Path(tmp))
        # Rounds of every case, interleaved: other work on the machine comes and goes,
        # and each case keeps its fastest run.
        for round_ in range(1, a.repeats + 1):
            for case in cases:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", case, "--data", tmp],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"{case} failed:\n{proc.stderr}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"  round {round_}, {CASES[case]}: {r['seconds']:.1f} s, "
                    f"{r['peak_mib']:.0f} MiB (load average {r['load']:.1f})",
                    flush=True,
                )
                if case not in results or r["seconds"] < results[case]["seconds"]:
                    results[case] = r
    print()
    head = (
        f"| {'fit':44} | {'time s':>7} | {'peak MiB':>8} | {'‖W − R‖/‖R‖':>11} | vs numpy | load |"
    )
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for case, r in results.items():
        base = results.get(BASELINE.get(case, ""))
        ratio = f"{r['seconds'] / base['seconds']:7.2f}x" if base else " " * 8
        print(
            f"| {CASES[case]:44} | {r['seconds']:7.1f} | {r['peak_mib']:8.0f} "
            f"| {r['error']:11.2e} | {ratio} | {r['load']:4.1f} |"
        )
    if not all(r["peak_exact"] for r in results.values()):
        print("(peak memory from ru_maxrss: includes loading the inputs)")


if __name__ == "__main__":
    main()
