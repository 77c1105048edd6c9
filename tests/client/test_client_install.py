"""``pip install ./client`` alone, in a fresh venv: the client needs neither torch nor vLLM.

SLOW and NETWORKED (marker ``install``): builds a venv and downloads the client's
dependencies from PyPI (15 s to a minute). Deselect with ``-m 'not install'``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.install


def run(*argv: str | Path, env: dict[str, str], timeout: float = 240) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_client_installs_alone_without_torch_or_vllm(tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    # Nothing from the test run's environment: the installed package must stand alone.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    # From a copy: pip builds in the source tree (build/, *.egg-info).
    source = tmp_path / "client"
    shutil.copytree(
        REPO / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    run(bin_dir / "pip", "install", "--quiet", source, env=env)

    assert "hidden-states" in run(bin_dir / "lamina", "--help", env=env)
    assert "--pooling" in run(bin_dir / "lamina", "hidden-states", "--help", env=env)
    where = run(
        bin_dir / "python",
        "-c",
        "import lamina, safetensors.numpy, tqdm; print(lamina.__file__)",
        env=env,
    )
    assert where.startswith(str(bin_dir.parent)), where  # installed, not a source tree
    installed = run(bin_dir / "python", "-m", "pip", "list", "--format=freeze", env=env).lower()
    assert "lamina-client==0.1.0" in installed
    for heavy in ("torch", "vllm"):
        probe = subprocess.run(
            [str(bin_dir / "python"), "-c", f"import {heavy}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0, f"{heavy} is importable in the client-only venv"
