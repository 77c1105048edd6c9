"""One level-triggered, idempotent reconcile of an LLMDeployment.

Decisions are pure functions of what is observed; the I/O around them is thin:
parse → list the pods (with spec.cost) → `cost_report` → `render_children` (0 pods
under a budget hold) → `plan_children` (what differs, what is no longer wanted) →
`_carry_out` (server-side apply, delete) → `plan_status` → patch it only when it
changed, with `status_events` for what is news. The same call serves create, update,
resume, drift and the periodic resync.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina_operator import leases
from lamina_operator.cost import (
    BUDGET_EXCEEDED,
    BUDGET_WARNING,
    CostReport,
    accelerator_unit,
    account,
    format_time,
    pod_run,
)
from lamina_operator.identity import ADD_ON_KINDS, CHILD_RESOURCES, Manifest, Owner, selector_string
from lamina_operator.kube import Kube, NotServed, RejectedByApi, TransientApiError
from lamina_operator.render import (
    DEFAULT_IMAGES,
    NO_PROMETHEUS,
    ServerImages,
    autoscaling_problem,
    render_children,
)
from lamina_operator.spec import LLMDeploymentSpec, ModelFacts, PrometheusSource
from lamina_operator.status import (
    READY,
    Conditions,
    assess_conditions,
    compute_status,
    invalid_spec_conditions,
    missing_add_on,
    status_patch,
)
from lamina_operator.validation import InvalidSpec, parse_spec

ChildKey = tuple[str, str, str]  # kind, namespace, name
OwnerKey = tuple[str, str]  # namespace, LLMDeployment name
DEFAULT_COST_REFRESH_SECONDS = 60
Event = tuple[str, str, str]  # type Normal|Warning, reason, message
PostEvent = Callable[[str, str, str], None]  # posts an Event on the owner


def fingerprint(value: Any) -> str:
    """A stable hash of a JSON-like value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def observed_fingerprint(obj: Mapping[str, Any]) -> str:
    """What of a child the operator cares about: spec and the metadata it sets."""
    meta = obj.get("metadata", {})
    return fingerprint(
        [obj.get("spec"), meta.get("labels"), meta.get("annotations"), meta.get("ownerReferences")]
    )


def _resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", 0))
    except ValueError:
        return 0


@dataclass
class ChildCache:
    """Children as last seen through watches or apply responses, newest wins."""

    objects: dict[ChildKey, Manifest] = field(default_factory=dict)

    def seen(self, key: ChildKey, obj: Manifest) -> None:
        current = self.objects.get(key)
        if current is None or _resource_version(obj) >= _resource_version(current):
            self.objects[key] = obj

    def gone(self, key: ChildKey) -> None:
        self.objects.pop(key, None)

    def get(self, key: ChildKey) -> Manifest | None:
        return self.objects.get(key)


@dataclass
class KnownState:
    """Per-process memory that lets an idle reconcile write nothing.

    For each child: the fingerprint of what was last applied and of what the API stored
    in answer. A child is applied again only when the desired manifest changed or the
    stored object no longer looks like the answer (someone edited or deleted it).
    """

    applied: dict[ChildKey, tuple[str, str]] = field(default_factory=dict)
    cache: ChildCache = field(default_factory=ChildCache)
    # Server pods by (namespace, LLMDeployment) and pod name: why they restart.
    pods: dict[OwnerKey, dict[str, Manifest]] = field(default_factory=dict)
    # The last state of server pods deleted since the accounting last recorded them, by
    # pod UID: the DELETED event is the only place their end is known.
    departed: dict[OwnerKey, dict[str, Manifest]] = field(default_factory=dict)
    # Status as this process last wrote it, with its resourceVersion: newer than the
    # watched object until the watch catches up. The accounting must build on it, or
    # a reconcile right after a write would redo the write from older facts.
    written: dict[OwnerKey, tuple[int, Manifest]] = field(default_factory=dict)

    def pod_departed(self, owner: OwnerKey, uid: str, pod: Manifest) -> None:
        self.departed.setdefault(owner, {})[uid] = pod

    def forget_departed(self, owner: OwnerKey, uids: Iterable[str]) -> None:
        """Departures the status now records (or that no accounting wants)."""
        departed = self.departed.get(owner, {})
        for uid in uids:
            departed.pop(uid, None)
        if not departed:
            self.departed.pop(owner, None)

    def status_written(self, owner: OwnerKey, stored: Manifest | None) -> None:
        if stored is not None:
            self.written[owner] = (_resource_version(stored), dict(stored.get("status", {})))

    def latest_status(
        self, owner: OwnerKey, resource_version: int, status: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """The newer of the watched status and the one this process last wrote."""
        written = self.written.get(owner)
        return written[1] if written is not None and written[0] > resource_version else status

    def forget_deployment(self, owner: OwnerKey) -> None:
        self.departed.pop(owner, None)
        self.written.pop(owner, None)

    def forget_owner(self, owner: OwnerKey) -> None:
        """All of a deleted LLMDeployment: its children, pods and status (memory
        must not grow with churn)."""
        self.forget_deployment(owner)
        self.pods.pop(owner, None)
        for key in [k for k in (*self.applied, *self.cache.objects) if k[1:] == owner]:
            self.forget(key)

    def pod_seen(self, owner: OwnerKey, name: str, pod: Manifest | None) -> None:
        """Remember a server pod's latest state (None: it is gone)."""
        pods = self.pods.setdefault(owner, {})
        if pod is None:
            pods.pop(name, None)
        else:
            pods[name] = pod
        if not pods:
            del self.pods[owner]

    def needs_apply(self, key: ChildKey, manifest: Manifest) -> bool:
        observed = self.cache.get(key)
        remembered = self.applied.get(key)
        if observed is None or remembered is None:
            return True
        return remembered != (fingerprint(manifest), observed_fingerprint(observed))

    def record(self, key: ChildKey, manifest: Manifest, stored: Manifest) -> None:
        self.applied[key] = (fingerprint(manifest), observed_fingerprint(stored))
        self.cache.seen(key, stored)

    def forget(self, key: ChildKey) -> None:
        self.applied.pop(key, None)
        self.cache.gone(key)


@dataclass(frozen=True)
class Observed:
    """The LLMDeployment as the reconcile sees it."""

    owner: Owner
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    meta: Mapping[str, Any] = field(default_factory=dict)  # annotations: leases
    resource_version: int = 0


@dataclass(frozen=True)
class Settings:
    """The operator's defaults for what specs leave out (its command-line flags)."""

    images: ServerImages = DEFAULT_IMAGES
    prometheus: PrometheusSource = NO_PROMETHEUS
    cost_refresh_seconds: int = DEFAULT_COST_REFRESH_SECONDS


@dataclass(frozen=True)
class ChildChanges:
    """What one reconcile must change among the children: decided purely, carried out by
    `_carry_out`."""

    apply: tuple[tuple[ChildKey, Manifest], ...] = ()
    prune: tuple[ChildKey, ...] = ()


def plan_children(
    owner: Owner, desired: Mapping[str, Manifest], memory: KnownState
) -> ChildChanges:
    """Apply what differs from what was last applied and seen; prune known children that
    are no longer wanted."""
    apply = tuple(
        (key, manifest)
        for kind, manifest in desired.items()
        if memory.needs_apply(key := (kind, owner.namespace, owner.name), manifest)
    )
    prune = tuple(
        key
        for kind in CHILD_RESOURCES
        if kind not in desired
        and memory.cache.get(key := (kind, owner.namespace, owner.name)) is not None
    )
    return ChildChanges(apply, prune)


async def _carry_out(
    kube: Kube, memory: KnownState, changes: ChildChanges, post_event: PostEvent
) -> list[str]:
    """Apply and prune; returns the add-ons the cluster lacks (their kinds are not
    served). A child the API rejects makes the spec invalid; a core kind not served is
    transient (e.g. its namespace is being deleted)."""
    missing = []
    for key, manifest in changes.apply:
        kind, _, name = key
        existed = memory.cache.get(key) is not None
        try:
            stored = await kube.apply(manifest)
        except RejectedByApi as error:
            raise InvalidSpec(f"the API rejected the {kind}: {error}") from None
        except NotServed as error:
            if kind not in ADD_ON_KINDS:
                raise TransientApiError(str(error)) from None
            missing.append(ADD_ON_KINDS[kind])
            continue
        memory.record(key, manifest, stored)
        if not existed:
            post_event("Normal", "Created", f"created {kind}/{name}")
    for key in changes.prune:
        kind, namespace, name = key
        await kube.delete(kind, namespace, name)
        memory.forget(key)
        post_event("Normal", "Deleted", f"deleted {kind}/{name}: no longer wanted")
    return missing


def cost_report(
    spec: LLMDeploymentSpec,
    previous: Mapping[str, Any],
    listed: Iterable[Manifest],
    departed: Iterable[Manifest],
    now: dt.datetime,
    refresh_seconds: int,
) -> CostReport | None:
    """status.cost from the pods the API lists now (listed, not remembered: a pod missed
    by the watch must not count as running forever) and those deleted since."""
    if spec.cost is None:
        return None
    unit = accelerator_unit(spec)
    runs = [pod_run(pod, unit, gone=False, observed_at=now) for pod in listed]
    runs += [pod_run(pod, unit, gone=True, observed_at=now) for pod in departed]
    return account(spec, previous.get("cost"), runs, now, refresh_seconds)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found: the parsed spec (None when invalid, with the conditions
    saying why) and what came of carrying out the plan."""

    spec: LLMDeploymentSpec | None
    facts: ModelFacts | None = None
    cost: CostReport | None = None
    missing_add_ons: tuple[str, ...] = ()
    invalid: Conditions | None = None


def plan_status(
    observed: Observed,
    outcome: Outcome,
    deployment: Manifest | None,
    pods: Iterable[Manifest],
    previous: Mapping[str, Any],
    prometheus: PrometheusSource,
    now: dt.datetime,
) -> Manifest:
    """The status the LLMDeployment should have, from what is observed now."""
    spec, cost = outcome.spec, outcome.cost
    if spec is None:
        assert outcome.invalid is not None
        conditions = outcome.invalid
    else:
        budget = cost.budget if cost is not None else None
        held = budget.exceeded[2] if budget is not None and budget.hold else None
        problem = autoscaling_problem(spec, prometheus) or missing_add_on(
            list(outcome.missing_add_ons)
        )
        conditions = assess_conditions(spec, observed.owner, deployment, list(pods), problem, held)
    return compute_status(
        owner=observed.owner,
        generation=observed.generation,
        conditions=conditions,
        spec=spec,
        facts=outcome.facts,
        deployment=deployment,
        previous=previous,
        now=format_time(now),
        cost=cost,
    )


async def _converge(
    kube: Kube,
    memory: KnownState,
    observed: Observed,
    previous: Mapping[str, Any],
    departed: Iterable[Manifest],
    now: dt.datetime,
    post_event: PostEvent,
    settings: Settings,
) -> Outcome:
    """Parse, account, render, plan and carry out: the children match the spec after."""
    owner = observed.owner
    facts: ModelFacts | None = None
    cost: CostReport | None = None
    try:
        spec, facts = parse_spec(owner.name, observed.spec)
        listed = await kube.list_pods(owner.namespace, selector_string(owner)) if spec.cost else []
        cost = cost_report(spec, previous, listed, departed, now, settings.cost_refresh_seconds)
        hold = cost is not None and cost.budget is not None and cost.budget.hold
        held_by = leases.held(observed.meta, now)
        desired = render_children(owner, spec, settings.images, settings.prometheus, held_by, hold)
        missing = await _carry_out(kube, memory, plan_children(owner, desired, memory), post_event)
    except InvalidSpec as error:
        # Children of an earlier valid spec are left serving; status says what to fix
        # (and, when only the API refused a child, the facts and cost found before).
        return Outcome(None, facts, cost, invalid=invalid_spec_conditions(str(error)))
    return Outcome(spec, facts, cost, tuple(missing))


async def reconcile(
    kube: Kube,
    memory: KnownState,
    observed: Observed,
    now: dt.datetime,
    post_event: PostEvent,
    settings: Settings = Settings(),
) -> Manifest:
    """Make the children match the spec and write the status; returns the status.

    Raises TransientApiError for failures worth retrying; an invalid spec is not an
    error here but a status (and an Event), since retrying cannot fix it.
    """
    owner = observed.owner
    key = (owner.namespace, owner.name)
    previous = memory.latest_status(key, observed.resource_version, observed.status)
    departed = dict(memory.departed.get(key, {}))
    outcome = await _converge(
        kube, memory, observed, previous, departed.values(), now, post_event, settings
    )
    status = plan_status(
        observed,
        outcome,
        memory.cache.get(("Deployment", owner.namespace, owner.name)),
        memory.pods.get(key, {}).values(),
        previous,
        settings.prometheus,
        now,
    )
    patch = status_patch(previous, status)
    if patch is not None:
        try:
            stored = await kube.patch_status(owner.namespace, owner.name, patch)
        except RejectedByApi as error:  # e.g. a status the CRD's schema refuses: a bug
            post_event("Warning", "StatusRejected", f"the API refused the status: {error}")
            return status
        memory.status_written(key, stored)
        for event in status_events(previous, status):
            post_event(*event)
    if outcome.spec is not None or outcome.cost is not None:
        # Recorded in status.cost now, or not wanted (no spec.cost); an invalid spec
        # keeps them for when it is fixed.
        memory.forget_departed(key, departed)
    return status


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def status_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Event]:
    """Events for notable status changes: became ready, stopped being ready, invalid,
    a budget condition turned true."""
    events: list[Event] = []
    for kind in (BUDGET_WARNING, BUDGET_EXCEEDED):
        was, now = _condition(before, kind), _condition(after, kind)
        if now.get("status") == "True" and was.get("status") != "True":
            events.append(("Warning", kind, str(now.get("message"))))
    old, new = _condition(before, READY), _condition(after, READY)
    if new.get("reason") == "InvalidSpec":
        if new.get("message") != old.get("message"):
            events.append(("Warning", "InvalidSpec", str(new.get("message"))))
    elif new.get("status") == "True" and old.get("status") != "True":
        events.append(("Normal", "Ready", str(new.get("message"))))
    elif old.get("status") == "True" and new.get("status") != "True":
        # Stopping on purpose (suspended, idle) is news, not trouble.
        kind = "Normal" if new.get("reason") in ("Suspended", "ScaledToZero") else "Warning"
        events.append((kind, str(new.get("reason")), str(new.get("message"))))
    return events
