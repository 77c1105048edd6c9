"""`python -m lamina_server --model M` with no other flag starts on a CPU machine,
sizing vLLM's KV cache from the memory limit it runs under (here a memory cgroup of
4 GiB, as a container would have) rather than from the machine's RAM.

Host and port come from LAMINA_HOST / LAMINA_PORT so the command line stays bare.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from kube_cluster import wait_until
from server.server_helpers import LOG_DIR, free_port, server_env

pytestmark = pytest.mark.vllm

CGROUP = Path("/sys/fs/cgroup")
LIMIT = 4 << 30


@contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A fresh memory cgroup (v1 or v2) with ``limit``; yields its cgroup.procs file."""
    name = f"lamina-test-{secrets.token_hex(3)}"
    if (CGROUP / "memory").is_dir():  # v1
        group, limit_file = CGROUP / "memory" / name, "memory.limit_in_bytes"
    else:  # v2 (the memory controller must be enabled for children of the root)
        group, limit_file = CGROUP / name, "memory.max"
    group.mkdir()
    try:
        (group / limit_file).write_text(str(limit))
        yield group / "cgroup.procs"
    finally:
        # The server's children (engine core, worker) may still be exiting.
        wait_until(
            lambda: not (group / "cgroup.procs").read_text().strip(),
            timeout=60,
            what="the server's processes to leave the cgroup",
        )
        group.rmdir()


def test_the_bare_command_starts_and_sizes_its_kv_cache_from_the_memory_limit(
    tiny_models: dict[str, Path],
) -> None:
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"bare-{port}.log"
    env = {**server_env(), "LAMINA_HOST": "127.0.0.1", "LAMINA_PORT": str(port)}
    with memory_cgroup(LIMIT) as procs, open(log_path, "wb") as log:
        # Join the cgroup first, then become the server: every process it starts
        # (engine core, model worker) is born inside the limit.
        join_then_run = f'echo $$ > {procs} && exec "$@"'
        cmd = [sys.executable, "-m", "lamina_server", "--model", str(tiny_models["llama"])]
        proc = subprocess.Popen(
            ["sh", "-c", join_then_run, "sh", *cmd], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:

            def ready() -> bool:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).is_success
                except httpx.HTTPError:
                    return False

            wait_until(ready, timeout=300, interval=1.0, what="the bare server to be ready")
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
            assert health["num_layers"] == 4
            # No --dtype: the checkpoint's float32, not vLLM's bfloat16 on CPU.
            assert health["dtype"] == "float32"
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/hidden_states", json={"prompts": ["Hi"]}, timeout=60
            )
            assert r.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    text = log_path.read_text()
    # What the server says it chose: the limit's share, not 0.92 x the machine's RAM.
    assert "KV cache: 0.75 GiB (memory limit 4.00 GiB" in text, text[-3000:]
    assert "Explicitly set (0.75/" in text, "vLLM used the size the server chose"
