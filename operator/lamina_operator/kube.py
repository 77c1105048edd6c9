"""The one module that talks to the Kubernetes API (kopf's own watches aside).

Writes are server-side apply with field manager `lamina-operator`; every request is
counted so benchmarks and `/metrics` can show API cost per reconcile.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from lamina_operator.identity import CHILD_RESOURCES, FIELD_MANAGER, Manifest
from lamina_operator.spec import API_GROUP, API_VERSION, PLURAL

_OWN_PREFIX = f"/apis/{API_GROUP}/{API_VERSION}"


class TransientApiError(RuntimeError):
    """The API failed in a way that may pass (5xx, 429, conflicts, network): retry later."""


class RejectedByApi(ValueError):
    """The API refused what the spec rendered (400/422): the spec must change."""


class NotServed(LookupError):
    """The API serves no such kind here (404 on apply): its CRD is not installed."""


def child_path(kind: str, namespace: str, name: str) -> str:
    """REST path of one child object."""
    group, version, plural = CHILD_RESOURCES[kind]
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{prefix}/namespaces/{namespace}/{plural}/{name}"


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


class Kube:
    """A small async client: apply, delete, patch status, list pods. Counts requests by verb."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.requests: Counter[str] = Counter()

    @classmethod
    async def connect(cls) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self, verb: str, path: str, body: Any = None, content_type: str | None = None, **query: str
    ) -> Manifest | None:
        self.requests[verb] += 1
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            result = await self._api.call_api(
                path,
                verb,
                query_params=list(query.items()),
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as error:
            if error.status in (400, 422):
                raise RejectedByApi(_message(error)) from None
            if error.status == 404:
                return None
            raise TransientApiError(f"{verb} {path}: {error.status} {_message(error)}") from None
        except (OSError, TimeoutError) as error:
            raise TransientApiError(f"{verb} {path}: {error}") from None
        return result if isinstance(result, dict) else None

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply one child; returns the object as stored."""
        meta = manifest["metadata"]
        path = child_path(manifest["kind"], meta["namespace"], meta["name"])
        stored = await self._call(
            "PATCH",
            path,
            body=manifest,
            content_type="application/apply-patch+yaml",
            fieldManager=FIELD_MANAGER,
            force="true",
        )
        if stored is None:  # apply creates what is missing: 404 means no such resource
            raise NotServed(f"apply {path}: the API serves no {manifest['kind']} here")
        return stored

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one child; False when it was already gone."""
        path = child_path(kind, namespace, name)
        return await self._call("DELETE", path, propagationPolicy="Background") is not None

    async def patch_own(self, namespace: str, name: str, patch: Manifest) -> None:
        """Merge-patch the LLMDeployment itself (a 409 on a stale resourceVersion is
        transient: the next reconcile reads it again)."""
        path = f"{_OWN_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}"
        await self._call("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest | None:
        """Merge-patch the LLMDeployment's status subresource; returns the object as
        stored (None when it is gone)."""
        path = f"{_OWN_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}/status"
        return await self._call(
            "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
        )

    async def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        """The pods of one namespace matching a label selector, as the API has them now."""
        path = f"/api/v1/namespaces/{namespace}/pods"
        found = await self._call("GET", path, labelSelector=selector)
        if found is None:
            raise TransientApiError(f"list {path}: the API returned nothing")
        return list(found.get("items", []))
