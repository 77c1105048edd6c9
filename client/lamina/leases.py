"""Who holds an LLMDeployment up for a job, and what to put back after (pure).

Two annotations on the LLMDeployment carry it, written with the object's
``resourceVersion`` as a precondition so that two jobs never lose each other's write:

``lamina.dev/leases``
    ``{"<holder>": "<expiry, RFC 3339>"}``: one entry per running job, renewed while
    it runs. An entry past its expiry no longer counts (its job crashed or lost the
    network), so a dead job cannot keep the GPUs up.
``lamina.dev/restore``
    ``{"suspend": bool, "replicas": int}``: the deployment as it was before the first
    job started it. The last job to leave puts it back; when every lease has expired
    the operator does.

``lamina up`` by hand drops ``restore`` (whoever said "up" wants it to stay up);
``lamina down`` refuses while a job's lease is live, unless forced. While any lease
is live the operator keeps at least one pod even if autoscaling would go to zero.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LEASES = "lamina.dev/leases"
RESTORE = "lamina.dev/restore"
UP_PREFIX = "up/"  # leases that `lamina up` takes on deployments that scale to zero

Patch = dict[str, Any]  # a JSON merge patch of the LLMDeployment


@dataclass(frozen=True)
class Restore:
    suspend: bool
    replicas: int


@dataclass(frozen=True)
class Usage:
    leases: dict[str, datetime.datetime]
    restore: Restore | None


class InUse(Exception):
    """``down`` while jobs hold the deployment: the message names them."""


def format_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _json_object(text: object) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def usage_of(llmd: Mapping[str, Any]) -> Usage:
    """The leases and restore record of an LLMDeployment. Entries that cannot be read
    (edited by hand) count as expired rather than pinning the deployment."""
    annotations = (llmd.get("metadata") or {}).get("annotations") or {}
    leases: dict[str, datetime.datetime] = {}
    for holder, text in _json_object(annotations.get(LEASES)).items():
        when = _parse_time(text)
        if when is not None:
            leases[holder] = when
    saved = _json_object(annotations.get(RESTORE))
    restore = None
    if isinstance(saved.get("suspend"), bool) and isinstance(saved.get("replicas"), int):
        restore = Restore(suspend=saved["suspend"], replicas=saved["replicas"])
    return Usage(leases, restore)


def live_leases(usage: Usage, now: datetime.datetime) -> dict[str, datetime.datetime]:
    return {holder: until for holder, until in usage.leases.items() if until > now}


def _spec(llmd: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = llmd.get("spec") or {}
    return spec


def current(llmd: Mapping[str, Any]) -> Restore:
    spec = _spec(llmd)
    return Restore(suspend=bool(spec.get("suspend", False)), replicas=int(spec.get("replicas", 1)))


def up_fields(llmd: Mapping[str, Any]) -> dict[str, Any]:
    """Spec fields that make a deployment serve: not suspended, at least one replica
    (autoscaling may have taken it to zero; it takes over again from one)."""
    fields: dict[str, Any] = {}
    state = current(llmd)
    if state.suspend:
        fields["suspend"] = False
    if state.replicas < 1:
        fields["replicas"] = 1
    return fields


def _patch(
    llmd: Mapping[str, Any], spec: Mapping[str, Any], annotations: Mapping[str, Any]
) -> Patch:
    # resourceVersion makes the API refuse (409) a patch computed from a stale read.
    metadata: dict[str, Any] = {"resourceVersion": llmd["metadata"]["resourceVersion"]}
    if annotations:
        metadata["annotations"] = dict(annotations)
    patch: Patch = {"metadata": metadata}
    if spec:
        patch["spec"] = dict(spec)
    return patch


def _leases_text(leases: Mapping[str, datetime.datetime]) -> str:
    return json.dumps({h: format_time(t) for h, t in sorted(leases.items())}, sort_keys=True)


def _restore_text(restore: Restore) -> str:
    return json.dumps({"replicas": restore.replicas, "suspend": restore.suspend}, sort_keys=True)


def acquire(
    llmd: Mapping[str, Any], holder: str, now: datetime.datetime, ttl: datetime.timedelta
) -> Patch:
    """Take (or renew) ``holder``'s lease and bring the deployment up. Who finds no
    record of what to put back writes one; a record left by jobs that died stands."""
    usage = usage_of(llmd)
    others = {h: t for h, t in live_leases(usage, now).items() if h != holder}
    annotations: dict[str, Any] = {LEASES: _leases_text({**others, holder: now + ttl})}
    if usage.restore is None:
        annotations[RESTORE] = _restore_text(current(llmd))
    return _patch(llmd, up_fields(llmd), annotations)


def release(llmd: Mapping[str, Any], holder: str, now: datetime.datetime) -> Patch:
    """Drop ``holder``'s lease; the last one out puts the deployment back."""
    usage = usage_of(llmd)
    others = {h: t for h, t in live_leases(usage, now).items() if h != holder}
    if others:
        return _patch(llmd, {}, {LEASES: _leases_text(others)})
    return _patch(llmd, _restore_fields(usage.restore), {LEASES: None, RESTORE: None})


def _restore_fields(restore: Restore | None) -> dict[str, Any]:
    if restore is None:
        return {}
    return {"suspend": restore.suspend, "replicas": restore.replicas}


def idle_window(llmd: Mapping[str, Any]) -> datetime.timedelta | None:
    """How long the autoscaler lets it idle before scaling to zero; None when it never
    scales to zero."""
    auto = _spec(llmd).get("autoscaling") or {}
    if not auto.get("enabled") or auto.get("minReplicas", 1) > 0:
        return None
    return datetime.timedelta(seconds=int(auto.get("scaleToZeroAfterSeconds", 300)))


def up(llmd: Mapping[str, Any], holder: str, now: datetime.datetime, *, ready: bool) -> Patch:
    """``lamina up``: serve, and stay up after running jobs end. A deployment that
    scales to zero also gets a lease (``up/<holder>``): the autoscaler would otherwise
    take the pod away again before anyone used it. It lasts one idle window from when
    the pod is ``ready``; until then, also the time a pod may take to start."""
    annotations: dict[str, Any] = {RESTORE: None}
    window = idle_window(llmd)
    if window is not None:
        if not ready:
            probes = _spec(llmd).get("probes") or {}
            window += datetime.timedelta(seconds=int(probes.get("startupTimeoutSeconds", 1800)))
        live = live_leases(usage_of(llmd), now)
        annotations[LEASES] = _leases_text({**live, UP_PREFIX + holder: now + window})
    return _patch(llmd, up_fields(llmd), annotations)


def down(llmd: Mapping[str, Any], now: datetime.datetime, *, force: bool) -> Patch:
    """``lamina down``: suspend (replicas and settings kept for the next ``up``).
    Only running jobs stop it, not an earlier ``up``."""
    live = {
        h: t for h, t in live_leases(usage_of(llmd), now).items() if not h.startswith(UP_PREFIX)
    }
    if live and not force:
        name = llmd["metadata"]["name"]
        held = ", ".join(f"{h} (until {format_time(t)})" for h, t in sorted(live.items()))
        raise InUse(
            f"llmd/{name} is held up by {len(live)} running job(s): {held}; "
            "wait for them, or stop it anyway with --force"
        )
    return _patch(llmd, {"suspend": True}, {LEASES: None, RESTORE: None})


@dataclass(frozen=True)
class Readiness:
    ready: bool
    summary: str


def readiness(llmd: Mapping[str, Any]) -> Readiness:
    """Ready once the operator has seen the current spec and a pod is ready."""
    meta = llmd.get("metadata") or {}
    status = llmd.get("status") or {}
    ready_pods = int(status.get("readyReplicas") or 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    seen = status.get("observedGeneration") == meta.get("generation")
    summary = f"{status.get('ready') or f'{ready_pods}/?'} pods ready"
    # What is wrong (Degraded) or going on (Progressing) says most; else why not Ready.
    active = [conditions[k] for k in ("Degraded", "Progressing") if k in conditions]
    detail = next((c for c in active if c.get("status") == "True"), conditions.get("Ready"))
    if detail:
        summary += f" ({detail.get('type')} {detail.get('reason')}: {detail.get('message')})"
    return Readiness(seen and ready_pods >= 1 and ready.get("status") == "True", summary)
