"""``lamina cost`` with a fake ``kubectl`` (a script) answering ``get llmd`` from a file:
the table and CSV a user reads, the month they ask for, and what kubectl was asked."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from lamina.cli import main

KUBECTL = f"""#!{sys.executable}
import json, os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_KUBECTL_STATE"])
args = sys.argv[1:]
with open(state / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\\n")
if (state / "fails").exists():
    sys.stderr.write((state / "fails").read_text())
    sys.exit(1)
if args[:1] == ["--context"]:
    args = args[2:]
if args[:2] != ["get", "llmd"] or args[-2:] != ["-o", "json"]:
    sys.exit(f"fake kubectl: unexpected {{args}}")
items = json.loads((state / "llmds.json").read_text())
if "-A" not in args:  # -n NS, else the context's namespace: research
    namespace = args[args.index("-n") + 1] if "-n" in args else "research"
    items = [i for i in items if i["metadata"]["namespace"] == namespace]
print(json.dumps({{"items": items}}))
"""


def llmd(namespace: str, name: str, cost: dict[str, Any] | None) -> dict[str, Any]:
    status = {"cost": cost} if cost else {}
    return {"metadata": {"namespace": namespace, "name": name}, "status": status}


LLAMA_COST = {
    "month": "2026-11",
    "asOf": "2026-11-23T12:00:00Z",
    "accelerator": "nvidia.com/gpu",
    "currency": "USD",
    "pricePerHour": 2.5,
    "acceleratorSeconds": 1382400,
    "acceleratorHours": 384.0,
    "cost": 960.0,
    "projectedCost": 1440.0,
    "runningAccelerators": 2,
    "budget": 2000.0,
    "settledSeconds": 0,
    "ledger": [],
    "history": [
        {
            "month": "2026-10",
            "acceleratorSeconds": 360000,
            "acceleratorHours": 100.0,
            "cost": 250.0,
            "currency": "USD",
            "budget": 2000.0,
        }
    ],
}
TINY_COST = {
    **LLAMA_COST,
    "accelerator": "pod",
    "currency": "EUR",
    "acceleratorHours": 1.234567,
    "cost": 0.123457,
    "projectedCost": 3.5,
    "history": [],
}
del TINY_COST["budget"]

DEPLOYMENTS = [
    llmd("research", "llama", LLAMA_COST),
    llmd("apps", "tiny", TINY_COST),
    llmd("research", "no-cost", None),
]


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the fake kubectl (first on PATH) and its state files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(KUBECTL)
    kubectl.chmod(0o755)
    (tmp_path / "llmds.json").write_text(json.dumps(DEPLOYMENTS))
    monkeypatch.setenv("FAKE_KUBECTL_STATE", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def calls(kube: Path) -> list[list[str]]:
    return [json.loads(line) for line in (kube / "calls.log").read_text().splitlines()]


def test_table_of_every_namespace(kube: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "-A"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "NAME",
        "MONTH",
        "ACCELERATOR",
        "HOURS",
        "COST",
        "PROJECTED",
        "BUDGET",
        "USED",
    ]
    # Sorted by namespace; a deployment without spec.cost is not listed.
    cells = [" ".join(line.split()) for line in lines[1:]]
    assert cells == [
        "apps tiny 2026-11 pod 1.23 0.12 EUR 3.50 EUR - -",
        "research llama 2026-11 nvidia.com/gpu 384.00 960.00 USD 1440.00 USD 2000.00 USD 48%",
    ]
    # Columns line up: every row starts its COST where the header does.
    at = lines[0].index("COST")
    assert all(line[at - 1] == " " and line[at] != " " for line in lines)
    assert calls(kube) == [["get", "llmd", "-A", "-o", "json"]]


def test_csv_has_full_precision(kube: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "-n", "research", "--csv", "--context", "prod"]) == 0
    (llama,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert llama == {
        "namespace": "research",
        "name": "llama",
        "month": "2026-11",
        "accelerator": "nvidia.com/gpu",
        "accelerator_hours": "384.0",
        "cost": "960.0",
        "projected_cost": "1440.0",
        "budget": "2000.0",
        "budget_used_percent": "48.0",
        "currency": "USD",
        "as_of": "2026-11-23T12:00:00Z",
    }
    assert calls(kube) == [["--context", "prod", "get", "llmd", "-n", "research", "-o", "json"]]
    assert main(["cost", "-n", "apps", "--csv"]) == 0
    (tiny,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (tiny["accelerator_hours"], tiny["cost"], tiny["budget"]) == ("1.234567", "0.123457", "")
    assert tiny["budget_used_percent"] == ""


def test_a_finished_month_comes_from_history(
    kube: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cost", "--month", "2026-10", "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (row["name"], row["month"], row["cost"], row["projected_cost"]) == (
        "llama",
        "2026-10",
        "250.0",
        "250.0",
    )
    assert (row["budget_used_percent"], row["as_of"]) == ("12.5", "")
    # Without -n or -A: kubectl's current namespace.
    assert calls(kube) == [["get", "llmd", "-o", "json"]]


def test_nothing_to_show_says_how_to_get_figures(
    kube: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cost", "--month", "2025-01"]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "no LLMDeployment with cost figures for 2025-01: set spec.cost" in out.err
    assert main(["cost", "--month", "2025-01", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "namespace,name,month,accelerator,accelerator_hours,cost,projected_cost,budget,"
        "budget_used_percent,currency,as_of"
    ]


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "october"])
def test_a_bad_month_is_a_usage_error(
    kube: Path, capsys: pytest.CaptureFixture[str], month: str
) -> None:
    assert main(["cost", "--month", month]) == 2
    assert "--month takes YYYY-MM" in capsys.readouterr().err
    assert not (kube / "calls.log").exists()


def test_kubectl_failing_exits_1_with_its_message(
    kube: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (kube / "fails").write_text('error: the server doesn\'t have a resource type "llmd"\n')
    assert main(["cost", "-A"]) == 1
    err = capsys.readouterr().err
    assert "the server doesn't have a resource type" in err
    assert "Traceback" not in err


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--help"]) == 0
    assert "lamina cost -A --month 2026-10 --csv" in capsys.readouterr().out
