"""Leases of jobs started with ``lamina run`` (pure).

The client (``client/lamina/leases.py``) keeps two annotations on the LLMDeployment:
``lamina.dev/leases`` (``{"<holder>": "<expiry, RFC 3339>"}``, renewed while each job
runs) and ``lamina.dev/restore`` (``{"suspend": bool, "replicas": int}``, the state
before the first job started it). The last job to end puts that state back. A job
that dies cannot, so once every lease has expired the operator does it: a crashed job
must not keep GPUs running.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

LEASES = "lamina.dev/leases"
RESTORE = "lamina.dev/restore"


def _json_object(text: object) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _expiries(annotations: Mapping[str, Any]) -> list[datetime.datetime]:
    # Unreadable entries count as expired, as the client reads them.
    times = []
    for text in _json_object(annotations.get(LEASES)).values():
        try:
            when = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            continue
        times.append(when if when.tzinfo else when.replace(tzinfo=datetime.UTC))
    return times


def overdue_restore(meta: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any] | None:
    """The merge patch that ends expired leases and puts the deployment back; None
    while a lease is live or there is none. It carries the resourceVersion it was
    computed from, so a job renewing at the same moment wins (409 for us)."""
    annotations = meta.get("annotations") or {}
    if LEASES not in annotations and RESTORE not in annotations:
        return None
    if any(when > now for when in _expiries(annotations)):
        return None
    patch: dict[str, Any] = {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],
            "annotations": {LEASES: None, RESTORE: None},
        }
    }
    restore = _json_object(annotations.get(RESTORE))
    if isinstance(restore.get("suspend"), bool) and isinstance(restore.get("replicas"), int):
        patch["spec"] = {"suspend": restore["suspend"], "replicas": restore["replicas"]}
    return patch


def held(meta: Mapping[str, Any], now: datetime.datetime) -> bool:
    """A live lease keeps at least one pod, even when autoscaling would go to zero."""
    return any(when > now for when in _expiries(meta.get("annotations") or {}))


def seconds_to_expiry(meta: Mapping[str, Any], now: datetime.datetime) -> float | None:
    """When the next live lease runs out (to look again then)."""
    ahead = [w for w in _expiries(meta.get("annotations") or {}) if w > now]
    return min(ahead).timestamp() - now.timestamp() if ahead else None
