"""Lint and type checks are part of the tests: ruff (lint + format) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([str(BIN / "ruff"), "check", "."], id="ruff-check"),
        pytest.param([str(BIN / "ruff"), "format", "--check", "."], id="ruff-format"),
        pytest.param([str(BIN / "mypy")], id="mypy-strict"),
    ],
)
def test_static_check_passes(command: list[str]) -> None:
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
