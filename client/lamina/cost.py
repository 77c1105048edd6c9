"""``lamina cost``: accelerator-hours and cost per LLMDeployment, from their status.cost.

Pure: LLMDeployment objects (as ``kubectl get llmd -o json`` gives them) in, rows and
their table or CSV out. The operator does the accounting; this only reads it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class CostRow:
    """One LLMDeployment's month."""

    namespace: str
    name: str
    month: str
    accelerator: str  # a GPU resource name, or "pod" on CPU
    accelerator_hours: float
    cost: float
    projected_cost: float  # the month's cost itself once it is over
    budget: float | None
    currency: str
    as_of: str | None  # when the figures of the current month were computed

    @property
    def budget_used_percent(self) -> float | None:
        """The cost so far as a share of the budget."""
        return None if not self.budget else self.cost / self.budget * 100


def is_month(text: str) -> bool:
    return MONTH.match(text) is not None


def _row(meta: Mapping[str, Any], cost: Mapping[str, Any], month: str | None) -> CostRow | None:
    common = {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "accelerator": str(cost.get("accelerator", "")),
    }
    if month is None or month == cost.get("month"):
        return CostRow(
            **common,
            month=str(cost["month"]),
            accelerator_hours=float(cost["acceleratorHours"]),
            cost=float(cost["cost"]),
            projected_cost=float(cost["projectedCost"]),
            budget=None if cost.get("budget") is None else float(cost["budget"]),
            currency=str(cost["currency"]),
            as_of=str(cost["asOf"]),
        )
    for past in cost.get("history", []):
        if past.get("month") == month:
            return CostRow(
                **common,
                month=month,
                accelerator_hours=float(past["acceleratorHours"]),
                cost=float(past["cost"]),
                projected_cost=float(past["cost"]),
                budget=None if past.get("budget") is None else float(past["budget"]),
                currency=str(past["currency"]),
                as_of=None,
            )
    return None


def cost_rows(deployments: Iterable[Mapping[str, Any]], month: str | None = None) -> list[CostRow]:
    """A row per LLMDeployment that accounts its cost (spec.cost) and has figures for
    `month` (None: its current month), by namespace and name."""
    rows = []
    for llmd in deployments:
        cost = (llmd.get("status") or {}).get("cost")
        if cost:
            row = _row(llmd.get("metadata", {}), cost, month)
            if row is not None:
                rows.append(row)
    return sorted(rows, key=lambda r: (r.namespace, r.name))


def _money(amount: float | None, currency: str) -> str:
    return "-" if amount is None else f"{amount:.2f} {currency}"


def render_table(rows: Sequence[CostRow]) -> str:
    """The human table, columns aligned like kubectl's."""
    header = [
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
    lines = [header]
    for r in rows:
        used = r.budget_used_percent
        lines.append(
            [
                r.namespace,
                r.name,
                r.month,
                r.accelerator,
                f"{r.accelerator_hours:.2f}",
                _money(r.cost, r.currency),
                _money(r.projected_cost, r.currency),
                _money(r.budget, r.currency),
                "-" if used is None else f"{used:.0f}%",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


CSV_FIELDS = [
    "namespace",
    "name",
    "month",
    "accelerator",
    "accelerator_hours",
    "cost",
    "projected_cost",
    "budget",
    "budget_used_percent",
    "currency",
    "as_of",
]


def render_csv(rows: Sequence[CostRow]) -> str:
    """The same rows as CSV with a header, full precision (spreadsheets, scripts)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        used = r.budget_used_percent
        writer.writerow(
            [
                r.namespace,
                r.name,
                r.month,
                r.accelerator,
                r.accelerator_hours,
                r.cost,
                r.projected_cost,
                "" if r.budget is None else r.budget,
                "" if used is None else round(used, 2),
                r.currency,
                r.as_of or "",
            ]
        )
    return out.getvalue()
