"""The GPU server image's install step works on an environment that already has vLLM,
and its Dockerfile keeps its promises (pinned base, non-root, caches, entrypoint).

The GPU image starts from vLLM's CUDA image, which no registry here serves: the test
repeats the Dockerfile's ``pip install --no-deps`` into a separate target directory
and starts the entrypoint from there. The CPU image (server/Dockerfile.cpu) is built
and run for real on the local node (tests/e2e).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "server" / "Dockerfile"


def test_dockerfile_promises() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0" in text
    assert re.search(r"^FROM \$\{VLLM_IMAGE\}$", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "HF_HOME=/cache/huggingface" in text
    assert 'VOLUME ["/cache"]' in text
    assert 'ENTRYPOINT ["python3", "-m", "lamina_server"]' in text
    assert "--no-deps" in text


def test_install_step_and_entrypoint(tmp_path: Path) -> None:
    # The Dockerfile's COPY lines, into a scratch tree (the build leaves files behind).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("operator", "server"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "VLLM_TARGET_DEVICE": "cpu"}
    code = (
        "import lamina_server, lamina_server.engine, lamina_server.capture;"
        "print(lamina_server.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.stdout.strip().startswith(str(target)), "imported the installed copy"
    help_out = subprocess.run(
        [sys.executable, "-m", "lamina_server", "--help"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert "--default-layers" in help_out.stdout
    assert "--max-queue-length" in help_out.stdout
