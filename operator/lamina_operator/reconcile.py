"""One level-triggered, idempotent reconcile of an LLMDeployment.

parse → render (pure) → server-side apply what differs → prune what is no longer
wanted → status from what is observed, written only when it changed. The same call
serves create, update, resume, drift and the periodic resync.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina_operator import leases
from lamina_operator.kube import Kube, NotServed, RejectedByApi, TransientApiError
from lamina_operator.render import (
    ADD_ON_KINDS,
    CHILD_RESOURCES,
    DEFAULT_IMAGES,
    NO_PROMETHEUS,
    Manifest,
    Owner,
    ServerImages,
    autoscaling_problem,
    render_children,
)
from lamina_operator.spec import LLMDeploymentSpec, ModelFacts, PrometheusSource
from lamina_operator.status import (
    READY,
    Verdict,
    compute_status,
    invalid_verdict,
    judge,
    missing_add_on,
    status_patch,
)
from lamina_operator.validation import InvalidSpec, parse_spec

ChildKey = tuple[str, str, str]  # kind, namespace, name
# (type Normal|Warning, reason, message) -> posted as a Kubernetes Event on the owner.
PostEvent = Callable[[str, str, str], None]


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
class Memory:
    """Per-process memory that lets an idle reconcile write nothing.

    For each child: the fingerprint of what was last applied and of what the API stored
    in answer. A child is applied again only when the desired manifest changed or the
    stored object no longer looks like the answer (someone edited or deleted it).
    """

    applied: dict[ChildKey, tuple[str, str]] = field(default_factory=dict)
    cache: ChildCache = field(default_factory=ChildCache)
    # Server pods by (namespace, LLMDeployment) and pod name: why they restart.
    pods: dict[tuple[str, str], dict[str, Manifest]] = field(default_factory=dict)

    def pod_seen(self, owner: tuple[str, str], name: str, pod: Manifest | None) -> None:
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


@dataclass(frozen=True)
class Settings:
    """The operator's defaults for what specs leave out (its command-line flags)."""

    images: ServerImages = DEFAULT_IMAGES
    prometheus: PrometheusSource = NO_PROMETHEUS


async def _apply_children(
    kube: Kube,
    memory: Memory,
    observed: Observed,
    spec: LLMDeploymentSpec,
    post_event: PostEvent,
    settings: Settings,
    now: datetime.datetime,
) -> list[str]:
    """Apply and prune; returns the add-ons the cluster lacks for this spec."""
    owner = observed.owner
    held = leases.held(observed.meta, now)
    desired = render_children(owner, spec, settings.images, settings.prometheus, held)
    missing = []
    for kind, manifest in desired.items():
        key = (kind, owner.namespace, owner.name)
        if not memory.needs_apply(key, manifest):
            continue
        existed = memory.cache.get(key) is not None
        try:
            stored = await kube.apply(manifest)
        except RejectedByApi as error:
            raise InvalidSpec(f"the API rejected the {kind}: {error}") from None
        except NotServed as error:
            if kind not in ADD_ON_KINDS:
                raise TransientApiError(str(error)) from None  # e.g. the namespace is going
            missing.append(ADD_ON_KINDS[kind])
            continue
        memory.record(key, manifest, stored)
        if not existed:
            post_event("Normal", "Created", f"created {kind}/{owner.name}")
    for kind in CHILD_RESOURCES:
        key = (kind, owner.namespace, owner.name)
        if kind not in desired and memory.cache.get(key) is not None:
            await kube.delete(kind, owner.namespace, owner.name)
            memory.forget(key)
            post_event("Normal", "Deleted", f"deleted {kind}/{owner.name}: no longer wanted")
    return missing


async def reconcile(
    kube: Kube,
    memory: Memory,
    observed: Observed,
    now: datetime.datetime,
    post_event: PostEvent,
    settings: Settings = Settings(),
) -> Manifest:
    """Make the children match the spec and write the status; returns the status.

    Raises TransientApiError for failures worth retrying; an invalid spec is not an
    error here but a status (and an Event), since retrying cannot fix it.
    """
    owner = observed.owner
    spec: LLMDeploymentSpec | None = None
    facts: ModelFacts | None = None
    verdict: Verdict
    missing: list[str] = []
    try:
        spec, facts = parse_spec(owner.name, observed.spec)
        missing = await _apply_children(kube, memory, observed, spec, post_event, settings, now)
    except InvalidSpec as error:
        # Children of an earlier valid spec are left serving; status says what to fix.
        spec, verdict = None, invalid_verdict(str(error))
    deployment = memory.cache.get(("Deployment", owner.namespace, owner.name))
    if spec is not None:
        pods = memory.pods.get((owner.namespace, owner.name), {})
        problem = autoscaling_problem(spec, settings.prometheus) or missing_add_on(missing)
        verdict = judge(spec, owner, deployment, list(pods.values()), problem)

    status = compute_status(
        owner=owner,
        generation=observed.generation,
        verdict=verdict,
        spec=spec,
        facts=facts,
        deployment=deployment,
        previous=observed.status,
        now=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    patch = status_patch(observed.status, status)
    if patch is not None:
        await kube.patch_status(owner.namespace, owner.name, patch)
        _announce(observed.status, status, post_event)
    return status


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == READY), {})


def _announce(before: Mapping[str, Any], after: Mapping[str, Any], post_event: PostEvent) -> None:
    """Events for notable status changes: became ready, stopped being ready, invalid."""
    old, new = _ready_condition(before), _ready_condition(after)
    if new.get("reason") == "InvalidSpec":
        if new.get("message") != old.get("message"):
            post_event("Warning", "InvalidSpec", str(new.get("message")))
    elif new.get("status") == "True" and old.get("status") != "True":
        post_event("Normal", "Ready", str(new.get("message")))
    elif old.get("status") == "True" and new.get("status") != "True":
        post_event("Warning", str(new.get("reason")), str(new.get("message")))
