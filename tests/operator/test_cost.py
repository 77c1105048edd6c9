"""Cost accounting as pure functions with a controlled clock: what `status.cost` says
after pods run, stop, are deleted, cross a month, and the operator restarts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from lamina_operator.cost import (
    SETTLE_AFTER,
    Ledger,
    PodRun,
    account,
    accounting_time,
    figures,
    ledger_from_status,
    month_bounds,
    pod_run,
    seconds_to_next_refresh,
    update_ledger,
)
from lamina_operator.spec import HISTORY_MONTHS, CostSpec, LLMDeploymentSpec

GPU = "nvidia.com/gpu"
UTC = dt.UTC
PRICE = CostSpec(price_per_hour=2.0)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    uid: str,
    started: dt.datetime | None,
    *,
    gpus: int = 1,
    deleted: dt.datetime | None = None,
    finished: dt.datetime | None = None,
    phase: str = "Running",
    earlier_start: dt.datetime | None = None,
) -> dict[str, Any]:
    """A server pod as the API shows it (kwok's: a running container until removed;
    a kubelet's: terminated with finishedAt)."""
    meta: dict[str, Any] = {"uid": uid, "name": f"llama-{uid}"}
    if deleted is not None:
        meta["deletionTimestamp"] = stamp(deleted)
        meta["deletionGracePeriodSeconds"] = 0
    container: dict[str, Any] = {"name": "server", "state": {}, "lastState": {}}
    if started is not None:
        if finished is not None:
            container["state"] = {
                "terminated": {"startedAt": stamp(started), "finishedAt": stamp(finished)}
            }
        else:
            container["state"] = {"running": {"startedAt": stamp(started)}}
    if earlier_start is not None:
        assert started is not None, "a restart needs the start that ended the earlier run"
        container["lastState"] = {
            "terminated": {"startedAt": stamp(earlier_start), "finishedAt": stamp(started)}
        }
    return {
        "metadata": meta,
        "spec": {"containers": [{"resources": {"limits": {GPU: str(gpus)}}}]},
        "status": {"phase": phase, "containerStatuses": [container] if started else []},
    }


def live(p: dict[str, Any], now: dt.datetime) -> PodRun:
    return pod_run(p, GPU, gone=False, observed_at=now)


def gone(p: dict[str, Any], now: dt.datetime) -> PodRun:
    return pod_run(p, GPU, gone=True, observed_at=now)


def spec(**cost: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "cost": {"pricePerHour": 2, **cost}}
    )


# -- one pod's interval ---------------------------------------------------------------


def test_a_running_pod_counts_from_its_container_start_times_its_gpus() -> None:
    start = at("2026-11-10T12:00:00")
    ledger = update_ledger(
        None, [live(pod("a", start, gpus=4), start)], at("2026-11-10T14:30:00"), PRICE
    )
    numbers = figures(ledger, PRICE)
    assert numbers.accelerator_seconds == 4 * 9000  # 2.5 h × 4 GPUs
    assert numbers.cost == 4 * 2.5 * 2.0
    assert numbers.running_accelerators == 4


def test_a_pod_that_never_started_costs_nothing() -> None:
    now = at("2026-11-10T12:00:00")
    ledger = update_ledger(None, [live(pod("a", None), now)], now, PRICE)
    assert ledger.entries == ()
    assert figures(ledger, PRICE).accelerator_seconds == 0


def test_a_restarted_container_counts_from_its_first_start() -> None:
    first, again = at("2026-11-10T10:00:00"), at("2026-11-10T11:00:00")
    run = live(pod("a", again, earlier_start=first), again)
    assert run.start == first


def test_end_of_a_deleted_pod_is_its_containers_finish_else_its_deletion() -> None:
    start, stop, removed = (
        at("2026-11-10T10:00:00"),
        at("2026-11-10T11:00:00"),
        at("2026-11-10T11:00:20"),
    )
    now = at("2026-11-10T12:00:00")
    kubelet = gone(pod("a", start, finished=stop, deleted=removed, phase="Failed"), now)
    kwok = gone(pod("b", start, deleted=removed), now)
    assert (kubelet.end, kwok.end) == (stop, removed)
    # Deleting starts a grace period: deletionTimestamp - grace is when it was asked.
    terminating = pod("c", start, deleted=removed)
    terminating["metadata"]["deletionGracePeriodSeconds"] = 60
    assert live(terminating, now).end is None  # still running out its grace period
    assert gone(terminating, now).end == removed - dt.timedelta(seconds=60)


# -- deleted pods, no double count, restarts ------------------------------------------


def test_a_deleted_pods_time_still_counts_and_is_settled_once() -> None:
    start, removed = at("2026-11-10T10:00:00"), at("2026-11-10T11:00:00")
    a, b = pod("a", start), pod("b", start)
    t1 = at("2026-11-10T10:30:00")
    ledger = update_ledger(None, [live(a, t1), live(b, t1)], t1, PRICE)
    # b is scaled away: its last state comes with the DELETED event.
    t2 = at("2026-11-10T11:00:30")
    ledger = update_ledger(
        ledger, [live(a, t2), gone(pod("b", start, deleted=removed), t2)], t2, PRICE
    )
    assert figures(ledger, PRICE).accelerator_seconds == 3600 + 3630
    # The same DELETED event applied again (a status write whose answer was lost).
    again = update_ledger(
        ledger, [live(a, t2), gone(pod("b", start, deleted=removed), t2)], t2, PRICE
    )
    assert again == ledger
    # Later b is no longer reported at all; once SETTLE_AFTER has passed it is folded.
    t3 = removed + SETTLE_AFTER
    ledger = update_ledger(ledger, [live(a, t3)], t3, PRICE)
    assert [e.uid for e in ledger.entries] == ["a"]
    assert ledger.settled_seconds == 3600
    assert figures(ledger, PRICE).accelerator_seconds == 3600 + int((t3 - start).total_seconds())


def test_a_deleted_pods_last_state_beats_a_listing_taken_before_it_went() -> None:
    start, removed = at("2026-11-10T10:00:00"), at("2026-11-10T11:00:00")
    now = at("2026-11-10T11:00:30")
    listed, deleted = live(pod("a", start), now), gone(pod("a", start, deleted=removed), now)
    for runs in ([listed, deleted], [deleted, listed]):
        ledger = update_ledger(None, runs, now, PRICE)
        assert ledger.entries[0].end == removed
        assert figures(ledger, PRICE).accelerator_seconds == 3600


def test_an_evicted_pod_still_in_the_api_is_not_settled_and_not_counted_twice() -> None:
    start, stop = at("2026-11-10T10:00:00"), at("2026-11-10T11:00:00")
    evicted = pod("a", start, finished=stop, phase="Failed")
    ledger: Ledger | None = None
    for hour in range(11, 16):
        now = at(f"2026-11-10T{hour}:00:00")
        ledger = update_ledger(ledger, [live(evicted, now)], now, PRICE)
    assert ledger is not None
    assert figures(ledger, PRICE).accelerator_seconds == 3600
    assert len(ledger.entries) == 1


def test_a_pod_deleted_while_the_operator_was_down_counts_until_last_seen() -> None:
    start = at("2026-11-10T10:00:00")
    seen = at("2026-11-10T10:30:00")
    ledger = update_ledger(None, [live(pod("a", start), seen)], seen, PRICE)
    # The operator comes back at noon; the pod is gone and its DELETED event was missed.
    ledger = update_ledger(ledger, [], at("2026-11-10T12:00:00"), PRICE)
    assert figures(ledger, PRICE).accelerator_seconds == 1800
    assert figures(ledger, PRICE).running_accelerators == 0


def test_a_restart_recomputes_the_same_status_from_the_same_facts() -> None:
    s = spec()
    start = at("2026-11-10T10:00:00")
    pods = [pod("a", start, gpus=2), pod("b", at("2026-11-10T10:20:00"))]
    now = at("2026-11-10T11:00:07")
    first = account(s, None, [live(p, now) for p in pods], now, 60)
    assert first is not None
    # A new operator process: only the stored status and the API's pods to go on.
    again = account(s, first.status, [live(p, now) for p in pods], now, 60)
    assert again is not None
    assert again.status == first.status
    assert first.status["acceleratorSeconds"] == 2 * 3600 + 2400
    assert first.status["asOf"] == "2026-11-10T11:00:00Z"


def test_an_idle_deployment_keeps_its_status_as_it_is() -> None:
    s = spec()
    start, removed = at("2026-11-10T10:00:00"), at("2026-11-10T11:00:00")
    t1 = at("2026-11-10T11:05:00")
    report = account(s, None, [gone(pod("a", start, deleted=removed), t1)], t1, 60)
    assert report is not None
    later = account(s, report.status, [], at("2026-11-10T11:09:00"), 60)
    assert later is not None
    assert later.status == report.status  # nothing runs: no write
    # It is settled after SETTLE_AFTER: that is a change worth writing.
    settled = account(s, report.status, [], removed + SETTLE_AFTER, 60)
    assert settled is not None
    assert settled.status["ledger"] == []
    assert settled.status["acceleratorSeconds"] == 3600


def test_figures_move_with_the_refresh_period_only() -> None:
    assert accounting_time(at("2026-11-10T11:00:59"), 60) == at("2026-11-10T11:00:00")
    assert accounting_time(at("2026-11-10T11:00:07"), 5) == at("2026-11-10T11:00:05")
    assert seconds_to_next_refresh(at("2026-11-10T11:00:45"), 60) == 15


# -- months ---------------------------------------------------------------------------


def test_an_interval_across_the_month_boundary_is_split() -> None:
    start = at("2026-10-31T23:00:00")
    p = pod("a", start, gpus=2)
    t1 = at("2026-10-31T23:30:00")
    ledger = update_ledger(None, [live(p, t1)], t1, PRICE)
    t2 = at("2026-11-01T01:00:00")
    ledger = update_ledger(ledger, [live(p, t2)], t2, PRICE)
    assert ledger.month == "2026-11"
    (october,) = ledger.history
    assert (october.month, october.accelerator_seconds, october.cost) == ("2026-10", 7200, 4.0)
    assert figures(ledger, PRICE).accelerator_seconds == 2 * 3600


def test_months_the_operator_slept_through_are_each_closed() -> None:
    p = pod("a", at("2026-09-30T00:00:00"))
    t1 = at("2026-09-30T12:00:00")
    ledger = update_ledger(None, [live(p, t1)], t1, PRICE)
    t2 = at("2026-12-01T00:00:00")
    ledger = update_ledger(ledger, [live(p, t2)], t2, PRICE)
    months = {m.month: m.accelerator_seconds for m in ledger.history}
    assert months == {"2026-09": 86400, "2026-10": 31 * 86400, "2026-11": 30 * 86400}
    assert [m.month for m in ledger.history] == ["2026-11", "2026-10", "2026-09"]
    assert figures(ledger, PRICE).accelerator_seconds == 0


def test_history_keeps_twelve_months() -> None:
    p = pod("a", at("2024-01-01T00:00:00"))
    ledger = update_ledger(
        None, [live(p, at("2024-01-01T00:00:00"))], at("2024-01-01T00:00:00"), PRICE
    )
    ledger = update_ledger(
        ledger, [live(p, at("2026-01-01T00:00:00"))], at("2026-01-15T00:00:00"), PRICE
    )
    assert len(ledger.history) == HISTORY_MONTHS
    assert ledger.history[0].month == "2025-12"


def test_a_pod_stopped_last_month_leaves_the_ledger_at_the_boundary() -> None:
    start, removed = at("2026-10-31T20:00:00"), at("2026-10-31T21:00:00")
    t1 = at("2026-10-31T21:01:00")
    ledger = update_ledger(None, [gone(pod("a", start, deleted=removed), t1)], t1, PRICE)
    ledger = update_ledger(ledger, [], at("2026-11-01T00:00:00"), PRICE)
    assert ledger.entries == ()
    assert ledger.history[0].accelerator_seconds == 3600


# -- projection and budget --------------------------------------------------------------


def test_projection_is_to_date_plus_what_runs_now_until_the_month_ends() -> None:
    # 1 GPU running since Nov 1: projected = 30 days × 24 h × 2.
    p = pod("a", at("2026-11-01T00:00:00"))
    now = at("2026-11-11T00:00:00")
    numbers = figures(update_ledger(None, [live(p, now)], now, PRICE), PRICE)
    assert numbers.cost == 10 * 24 * 2.0
    assert numbers.projected_cost == 30 * 24 * 2.0


def _budget(budget: float, hours_run: int, running: bool, suspend: bool = False) -> Any:
    s = spec(monthlyBudget=budget, suspendOverBudget=suspend)
    start = at("2026-11-01T00:00:00")
    now = start + dt.timedelta(hours=hours_run)
    p = pod("a", start) if running else pod("a", start, deleted=now)
    run = live(p, now) if running else gone(p, now)
    report = account(s, None, [run], now, 60)
    assert report is not None
    assert report.budget is not None
    return report


def test_budget_warning_at_80_percent_of_the_projection() -> None:
    # 1 GPU at 2/h for a 30-day month: 1440 projected.
    report = _budget(1440 / 0.8, hours_run=1, running=True)
    assert report.budget.warning[:2] == (True, "ProjectedOver80Percent")
    assert report.budget.exceeded[:2] == (False, "WithinBudget")
    below = _budget(1440 / 0.8 + 10, hours_run=1, running=True)
    assert below.budget.warning[0] is False


def test_budget_exceeded_by_the_projection_says_when_it_runs_out() -> None:
    report = _budget(240, hours_run=24, running=True)  # 48 spent, 2 per hour
    assert report.budget.exceeded[:2] == (True, "ProjectedOverBudget")
    assert "spent by 2026-11-06T00:00:00Z" in report.budget.exceeded[2]
    assert report.budget.hold is False


def test_a_stopped_deployment_is_projected_at_what_it_spent() -> None:
    report = _budget(100, hours_run=24, running=False)
    assert report.status["projectedCost"] == report.status["cost"] == 48.0
    assert report.budget.warning[0] is False


def test_spent_budget_holds_the_pods_only_with_suspend_over_budget() -> None:
    spent = _budget(40, hours_run=24, running=True)
    assert spent.budget.exceeded[:2] == (True, "BudgetSpent")
    assert spent.budget.hold is False
    held = _budget(40, hours_run=24, running=True, suspend=True)
    assert held.budget.hold is True
    assert "scaled to zero" in held.budget.exceeded[2]


def test_a_new_month_releases_a_budget_hold() -> None:
    s = spec(monthlyBudget=40, suspendOverBudget=True)
    start, stop = at("2026-11-28T00:00:00"), at("2026-11-29T00:00:00")
    held = account(s, None, [gone(pod("a", start, deleted=stop), stop)], stop, 60)
    assert held is not None
    assert held.budget is not None
    assert held.budget.hold
    december = account(s, held.status, [], at("2026-12-01T00:00:30"), 60)
    assert december is not None
    assert december.budget is not None
    assert december.budget.hold is False
    assert december.status["history"][0]["cost"] == 48.0
    assert december.status["history"][0]["budget"] == 40


def test_cpu_deployments_count_pod_hours() -> None:
    s = LLMDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "resources": {"useGPU": False}, "cost": {"pricePerHour": 0.5}}
    )
    start = at("2026-11-10T10:00:00")
    cpu_pod = pod("a", start)
    cpu_pod["spec"]["containers"][0]["resources"] = {}
    now = at("2026-11-10T12:00:00")
    report = account(s, None, [pod_run(cpu_pod, "pod", gone=False, observed_at=now)], now, 60)
    assert report is not None
    assert report.status["accelerator"] == "pod"
    assert (report.status["acceleratorHours"], report.status["cost"]) == (2.0, 1.0)


def test_the_status_round_trips_through_the_ledger() -> None:
    report = _budget(240, hours_run=24, running=True)
    ledger = ledger_from_status(report.status)
    assert ledger is not None
    assert ledger.as_of == at("2026-11-02T00:00:00")
    assert [e.uid for e in ledger.entries] == ["a"]


# -- the property: whatever the order of observations, each second counts once ---------

MONTH_START = at("2026-10-25T00:00:00")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Pods as (start, end, gpus) in minutes from MONTH_START, and reconcile times."""
    horizon = 14 * 24 * 60  # two weeks, across the month boundary
    pods = []
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, horizon - 2))
        end = draw(st.integers(start + 1, horizon))
        pods.append((start, end, draw(st.integers(1, 8))))
    times = sorted(draw(st.lists(st.integers(0, horizon), min_size=1, max_size=25)))
    return pods, times


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_each_accelerator_second_counts_once_whatever_is_seen_when(
    scenario: tuple[list[tuple[int, int, int]], list[int]], data: st.DataObject
) -> None:
    pods, times = scenario
    minute = dt.timedelta(minutes=1)
    ledger: Ledger | None = None
    last = MONTH_START
    for t in times:
        now = MONTH_START + t * minute
        runs = []
        for i, (start, end, gpus) in enumerate(pods):
            started, ended = MONTH_START + start * minute, MONTH_START + end * minute
            if started > now:
                continue
            if ended > now:
                runs.append(live(pod(str(i), started, gpus=gpus), now))
            elif ended > last or (
                ended > now - SETTLE_AFTER and data.draw(st.booleans(), label="seen again")
            ):
                # The DELETED event since the last reconcile; or seen again (a status
                # write whose answer was lost), which can only happen until it settles.
                runs.append(gone(pod(str(i), started, gpus=gpus, deleted=ended), now))
        ledger = update_ledger(ledger, runs, now, PRICE)
        last = now
    assert ledger is not None

    def true_seconds(low: dt.datetime, high: dt.datetime) -> int:
        total = 0
        for start, end, gpus in pods:
            a = max(MONTH_START + start * minute, low)
            b = min(MONTH_START + end * minute, high)
            total += gpus * max(0, int((b - a).total_seconds()))
        return total

    month_start, _ = month_bounds(ledger.month)
    assert figures(ledger, PRICE).accelerator_seconds == true_seconds(month_start, ledger.as_of)
    for finished in ledger.history:
        low, high = month_bounds(finished.month)
        assert finished.accelerator_seconds == true_seconds(low, high)
