"""Accelerator-hours and cost of an LLMDeployment, from its pods' running intervals.

Pure: pods' API objects and the previous `status.cost` in, the new one out; the clock
is an argument. Nothing is counted in memory, so an operator restart recomputes the
same figures from the same facts.

How it never double counts and survives restarts: `status.cost.ledger` holds one entry
per pod UID that ran this month (its accelerators, first container start and, once it
stopped, its end). A running pod's time is `start → asOf`; merging the same pod again
changes nothing. Entries of pods that are gone from the API are folded into
`settledSeconds` once their end is SETTLE_AFTER old (by then every source that could
report the pod again, such as a late watch event, has passed), so the ledger stays as
small as the pods of the last quarter of an hour. At a month boundary the month's total goes to
`history` (intervals spanning the boundary are split there).

Pods deleted while the operator is down: their DELETED event is never seen, so when the
operator comes back the entry of a pod that is no longer in the API ends at the
previous `asOf`, the last time it was known to run. That undercounts at most the time
between the last status write (every refresh while pods run) and the deletion; a pod
that started and stopped entirely during the outage is not counted. A finalizer on the
pods would make this exact, at a price: while the operator is down (or after it is
uninstalled) every deleted pod would stay Terminating, keeping its GPUs allocated in the
scheduler and blocking namespace deletion. Cost accounting should not be able to take
capacity away, so there is none.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lamina_operator.identity import Manifest
from lamina_operator.spec import HISTORY_MONTHS, CostSpec, LLMDeploymentSpec

# A gone pod's entry is kept this long after its end before it is folded into the
# month's settled seconds; see the module docstring.
SETTLE_AFTER = dt.timedelta(minutes=15)
WARNING_FRACTION = 0.8
BUDGET_WARNING, BUDGET_EXCEEDED = "BudgetWarning", "BudgetExceeded"
POD_ACCELERATOR = "pod"  # the unit of CPU deployments: pod-hours
TERMINAL_PHASES = ("Succeeded", "Failed")


# -- time ---------------------------------------------------------------------------


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 timestamp as the API writes it (``2026-11-01T00:00:00Z``)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def format_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_of(when: dt.datetime) -> str:
    """The calendar month (UTC) of a moment, ``YYYY-MM``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    """Start (inclusive) and end (exclusive) of a ``YYYY-MM`` month in UTC."""
    year, number = (int(part) for part in month.split("-"))
    start = dt.datetime(year, number, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + number // 12, number % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def next_month(month: str) -> str:
    return month_of(month_bounds(month)[1])


def accounting_time(now: dt.datetime, refresh_seconds: int) -> dt.datetime:
    """The moment the figures describe: `now` rounded down to the refresh period, so
    every reconcile within one period computes the same figures and writes nothing."""
    epoch = math.floor(now.timestamp() / refresh_seconds) * refresh_seconds
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def seconds_to_next_refresh(now: dt.datetime, refresh_seconds: int) -> float:
    """How long until `accounting_time` moves on."""
    return refresh_seconds - now.timestamp() % refresh_seconds


# -- what one pod says --------------------------------------------------------------


@dataclass(frozen=True)
class PodRun:
    """What one pod's API object says about when it held its accelerators."""

    uid: str
    name: str
    accelerators: int
    start: dt.datetime | None  # its first container start; None: never ran
    end: dt.datetime | None  # when it stopped; None: still running
    gone: bool  # deleted from the API (this is its last state)


def _container_times(pod: Mapping[str, Any]) -> tuple[list[str], list[str], bool]:
    """Start times, finish times, and whether every container has terminated."""
    starts: list[str] = []
    finishes: list[str] = []
    statuses = pod.get("status", {}).get("containerStatuses") or []
    for container in statuses:
        for state in (container.get("state", {}), container.get("lastState", {})):
            for phase in ("running", "terminated"):
                if started := (state.get(phase) or {}).get("startedAt"):
                    starts.append(started)
        if finished := (container.get("state", {}).get("terminated") or {}).get("finishedAt"):
            finishes.append(finished)
    return starts, finishes, bool(statuses) and len(finishes) == len(statuses)


def _deletion_time(meta: Mapping[str, Any]) -> dt.datetime | None:
    """When the pod was told to stop: deletionTimestamp is that moment plus the grace
    period (kubelets and kwok shorten it to 0 when the pod is finally removed)."""
    deleted = meta.get("deletionTimestamp")
    if not deleted:
        return None
    grace = int(meta.get("deletionGracePeriodSeconds") or 0)
    return parse_time(deleted) - dt.timedelta(seconds=grace)


def accelerators_of(pod: Mapping[str, Any], accelerator: str) -> int:
    """Accelerators one pod holds: its GPU limits, or 1 when the unit is the pod."""
    if accelerator == POD_ACCELERATOR:
        return 1
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(accelerator, 0))
    return total


def pod_run(
    pod: Mapping[str, Any], accelerator: str, *, gone: bool, observed_at: dt.datetime
) -> PodRun:
    """The running interval of one pod as far as its object tells.

    It starts when its first container started (scheduling and image pulls are not
    counted) and ends when every container terminated, else when the pod was deleted
    (a pod removed without its containers' final state, e.g. on a lost node), else,
    for a failed pod with no container facts, when it was first seen stopped."""
    meta = pod.get("metadata", {})
    starts, finishes, all_terminated = _container_times(pod)
    stopped = gone or pod.get("status", {}).get("phase") in TERMINAL_PHASES
    end: dt.datetime | None = None
    if all_terminated and (stopped or meta.get("deletionTimestamp")):
        end = max(parse_time(t) for t in finishes)
    elif stopped:
        end = _deletion_time(meta) or observed_at
    return PodRun(
        uid=str(meta.get("uid", "")),
        name=str(meta.get("name", "")),
        accelerators=accelerators_of(pod, accelerator),
        start=min(parse_time(t) for t in starts) if starts else None,
        end=end,
        gone=gone,
    )


# -- the ledger ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One pod's running interval in the ledger."""

    uid: str
    pod: str
    accelerators: int
    start: dt.datetime
    end: dt.datetime | None

    def seconds_within(self, low: dt.datetime, high: dt.datetime) -> int:
        """Accelerator-seconds of the part of this interval within [low, high)."""
        end = high if self.end is None else min(self.end, high)
        return self.accelerators * max(0, int((end - max(self.start, low)).total_seconds()))


@dataclass(frozen=True)
class MonthTotal:
    """A finished month."""

    month: str
    accelerator_seconds: int
    cost: float
    currency: str
    budget: float | None


@dataclass(frozen=True)
class Ledger:
    """What status.cost keeps between reconciles."""

    month: str
    as_of: dt.datetime
    settled_seconds: int  # of this month, from entries already folded
    entries: tuple[Entry, ...]
    history: tuple[MonthTotal, ...]  # newest first


def price_of(seconds: int, cost: CostSpec) -> float:
    return seconds / 3600 * cost.price_per_hour


def _merge(entries: dict[str, Entry], runs: Iterable[PodRun]) -> None:
    for run in runs:
        if run.start is None:
            continue
        known = entries.get(run.uid)
        if known is None:
            entries[run.uid] = Entry(run.uid, run.name, run.accelerators, run.start, run.end)
        else:
            # The same pod again: facts only get more complete, never counted twice.
            end = known.end if known.end is not None else run.end
            entries[run.uid] = replace(known, start=min(known.start, run.start), end=end)


def _close_vanished(
    entries: dict[str, Entry], runs: Mapping[str, PodRun], last_seen: dt.datetime
) -> None:
    """Running entries whose pod is no longer in the API and whose last state was not
    seen (deleted while the operator was down): they ran at least until `last_seen`."""
    for uid, entry in entries.items():
        if entry.end is None and uid not in runs:
            entries[uid] = replace(entry, end=max(entry.start, last_seen))


def _roll_over(
    ledger: Ledger, entries: dict[str, Entry], month: str, cost: CostSpec
) -> tuple[int, list[MonthTotal]]:
    """Close every month from the ledger's up to `month`: each one's total goes to
    history. Returns this month's settled seconds (0 after a rollover) and history."""
    history = list(ledger.history)
    settled, current = ledger.settled_seconds, ledger.month
    while current < month:
        low, high = month_bounds(current)
        seconds = settled + sum(e.seconds_within(low, high) for e in entries.values())
        history.insert(
            0,
            MonthTotal(
                current, seconds, price_of(seconds, cost), cost.currency, cost.monthly_budget
            ),
        )
        settled, current = 0, next_month(current)
    month_start = month_bounds(month)[0]
    for uid in [u for u, e in entries.items() if e.end is not None and e.end <= month_start]:
        del entries[uid]  # all of its time is in history now
    return settled, history[:HISTORY_MONTHS]


def update_ledger(
    previous: Ledger | None, runs: Sequence[PodRun], as_of: dt.datetime, cost: CostSpec
) -> Ledger:
    """The ledger at `as_of`, given every pod the API has now and the last state of the
    pods deleted since the previous ledger was written. Applying the same facts again
    gives the same ledger."""
    if previous is None:
        previous = Ledger(month_of(as_of), as_of, 0, (), ())
    as_of = max(as_of, previous.as_of)
    month = month_of(as_of)
    by_uid: dict[str, PodRun] = {}
    for run in runs:  # a deleted pod's last state beats an earlier listing of it
        if run.uid not in by_uid or run.gone:
            by_uid[run.uid] = run
    entries = {e.uid: e for e in previous.entries}
    _merge(entries, by_uid.values())
    _close_vanished(entries, by_uid, previous.as_of)
    settled, history = _roll_over(previous, entries, month, cost)

    month_start = month_bounds(month)[0]
    cutoff = as_of - SETTLE_AFTER
    for uid, entry in list(entries.items()):
        last = by_uid.get(uid)
        if entry.end is not None and entry.end <= cutoff and (last is None or last.gone):
            settled += entry.seconds_within(month_start, as_of)
            del entries[uid]
    ordered = tuple(sorted(entries.values(), key=lambda e: (e.start, e.uid)))
    return Ledger(month, as_of, settled, ordered, tuple(history))


# -- figures, budget ----------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """This month so far, and where it ends if what runs now keeps running."""

    accelerator_seconds: int
    cost: float
    projected_cost: float
    running_accelerators: int


def figures(ledger: Ledger, cost: CostSpec) -> Figures:
    """Month-to-date figures at the ledger's `asOf`. The projection adds what the
    accelerators running now would cost until the month ends: a deployment left on is
    projected at its full month at once, one that is stopped at what it has spent."""
    start, end = month_bounds(ledger.month)
    seconds = ledger.settled_seconds + sum(
        e.seconds_within(start, ledger.as_of) for e in ledger.entries
    )
    running = sum(
        e.accelerators for e in ledger.entries if e.end is None and e.start <= ledger.as_of
    )
    remaining = int((end - ledger.as_of).total_seconds())
    spent = price_of(seconds, cost)
    return Figures(seconds, spent, spent + price_of(running * remaining, cost), running)


@dataclass(frozen=True)
class BudgetState:
    """The two budget conditions (status, reason, message) and whether to hold the pods
    at zero."""

    warning: tuple[bool, str, str]
    exceeded: tuple[bool, str, str]
    hold: bool


def _money(amount: float, currency: str) -> str:
    return f"{amount:.2f} {currency}"


def assess_budget(ledger: Ledger, numbers: Figures, cost: CostSpec) -> BudgetState | None:
    """BudgetWarning at 80 % and BudgetExceeded at 100 % of the budget by the month's
    projection; the pods are held at zero (with suspendOverBudget) once the cost to date
    reaches the budget, not on a projection: a stopped deployment's projection falls
    back to what it spent, so holding on projections would start and stop it in turn."""
    budget = cost.monthly_budget
    if budget is None:
        return None
    money = cost.currency
    share = numbers.projected_cost / budget * 100
    projected = (
        f"projected {_money(numbers.projected_cost, money)} for {ledger.month} is "
        f"{share:.0f} % of the {_money(budget, money)} budget"
    )
    warning = (
        (True, "ProjectedOver80Percent", projected)
        if numbers.projected_cost >= WARNING_FRACTION * budget
        else (False, "WithinBudget", projected)
    )
    spent = numbers.cost >= budget
    hold = spent and cost.suspend_over_budget
    if spent:
        message = (
            f"{ledger.month} has cost {_money(numbers.cost, money)}, reaching the "
            f"{_money(budget, money)} budget"
        )
        if hold:
            message += (
                "; pods are scaled to zero until the budget allows (next month or a "
                "higher spec.cost.monthlyBudget)"
            )
        exceeded = (True, "BudgetSpent", message)
    elif numbers.projected_cost >= budget:
        exceeded = (True, "ProjectedOverBudget", projected + _runs_out(ledger, numbers, cost))
    else:
        exceeded = (False, "WithinBudget", projected)
    return BudgetState(warning, exceeded, hold)


def _runs_out(ledger: Ledger, numbers: Figures, cost: CostSpec) -> str:
    rate = price_of(numbers.running_accelerators * 3600, cost)  # per hour
    if cost.monthly_budget is None or rate <= 0:
        return ""
    hours = (cost.monthly_budget - numbers.cost) / rate
    when = ledger.as_of + dt.timedelta(hours=hours)
    return f"; at the current rate it is spent by {format_time(when)}"


# -- status.cost --------------------------------------------------------------------


def accelerator_unit(spec: LLMDeploymentSpec) -> str:
    """What the hours are of: the GPU resource name, or `pod` on CPU."""
    return spec.resources.gpu_resource_name if spec.resources.use_gpu else POD_ACCELERATOR


def ledger_from_status(cost_status: Mapping[str, Any] | None) -> Ledger | None:
    """The ledger kept in status.cost (None when there is none)."""
    if not cost_status or "month" not in cost_status:
        return None
    entries = tuple(
        Entry(
            uid=e["uid"],
            pod=e["pod"],
            accelerators=int(e["accelerators"]),
            start=parse_time(e["start"]),
            end=parse_time(e["end"]) if e.get("end") else None,
        )
        for e in cost_status.get("ledger", [])
    )
    history = tuple(
        MonthTotal(
            month=m["month"],
            accelerator_seconds=int(m["acceleratorSeconds"]),
            cost=float(m["cost"]),
            currency=m["currency"],
            budget=None if m.get("budget") is None else float(m["budget"]),
        )
        for m in cost_status.get("history", [])
    )
    return Ledger(
        month=cost_status["month"],
        as_of=parse_time(cost_status["asOf"]),
        settled_seconds=int(cost_status.get("settledSeconds", 0)),
        entries=entries,
        history=history,
    )


def _hours(seconds: int) -> float:
    return round(seconds / 3600, 6)


def _amount(value: float) -> float:
    return round(value, 6)


def cost_status(ledger: Ledger, numbers: Figures, cost: CostSpec, accelerator: str) -> Manifest:
    """status.cost (camelCase) from the ledger and its figures."""
    ledger_rows: list[Manifest] = []
    for e in ledger.entries:
        row: Manifest = {
            "uid": e.uid,
            "pod": e.pod,
            "accelerators": e.accelerators,
            "start": format_time(e.start),
        }
        if e.end is not None:
            row["end"] = format_time(e.end)
        ledger_rows.append(row)
    history: list[Manifest] = []
    for m in ledger.history:
        month: Manifest = {
            "month": m.month,
            "acceleratorSeconds": m.accelerator_seconds,
            "acceleratorHours": _hours(m.accelerator_seconds),
            "cost": _amount(m.cost),
            "currency": m.currency,
        }
        if m.budget is not None:
            month["budget"] = m.budget
        history.append(month)
    out: Manifest = {
        "month": ledger.month,
        "asOf": format_time(ledger.as_of),
        "accelerator": accelerator,
        "currency": cost.currency,
        "pricePerHour": cost.price_per_hour,
        "acceleratorSeconds": numbers.accelerator_seconds,
        "acceleratorHours": _hours(numbers.accelerator_seconds),
        "cost": _amount(numbers.cost),
        "projectedCost": _amount(numbers.projected_cost),
        "runningAccelerators": numbers.running_accelerators,
        "settledSeconds": ledger.settled_seconds,
        "ledger": ledger_rows,
        "history": history,
    }
    if cost.monthly_budget is not None:
        out["budget"] = cost.monthly_budget
    return out


@dataclass(frozen=True)
class CostReport:
    """What the reconcile needs from the accounting: status.cost and the budget."""

    status: Manifest
    budget: BudgetState | None


def account(
    spec: LLMDeploymentSpec,
    previous: Mapping[str, Any] | None,
    runs: Sequence[PodRun],
    now: dt.datetime,
    refresh_seconds: int,
) -> CostReport | None:
    """status.cost and the budget's state at `now`, from the previous status.cost and
    the pods. When only the clock moved and nothing it changes would show (no pod
    running, nothing started, stopped or settled), the previous status is kept as it
    is, so an idle deployment causes no writes. None when spec.cost is unset."""
    if spec.cost is None:
        return None
    accelerator = accelerator_unit(spec)
    before = ledger_from_status(previous)
    ledger = update_ledger(before, runs, accounting_time(now, refresh_seconds), spec.cost)
    numbers = figures(ledger, spec.cost)
    status = cost_status(ledger, numbers, spec.cost, accelerator)
    if before is not None and previous is not None:
        unchanged = cost_status(
            replace(ledger, as_of=before.as_of), numbers, spec.cost, accelerator
        )
        if unchanged == previous:
            status = dict(previous)
    return CostReport(status, assess_budget(ledger, numbers, spec.cost))
