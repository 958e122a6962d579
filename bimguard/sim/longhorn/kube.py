"""How a simulated longhorn-manager talks to the API server: kubernetes_asyncio over real HTTP.

Longhorn writes through client-go (``UpdateStatus`` = PUT ``.../<name>/status`` with the object's
``resourceVersion``, ``datastore/longhorn.go:2702-2703 @v1.7.2``); the sim does the same with
``CustomObjectsApi`` so that admission webhooks registered on the emulated API server see exactly
these requests. Errors are mapped to the exceptions the controllers act on (409 Conflict ->
requeue, 409 AlreadyExists, 404, 403, 422).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, AsyncIterator, Awaitable, Callable

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

# The same error types as the product's client layer: both map Kubernetes Status bodies alike.
from bimguard.kube import AlreadyExists, Conflict, Forbidden, Invalid, KubeError, NotFound
from bimguard.kube import translate as _translate
from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import GROUP, NAMESPACE, VERSION

log = logging.getLogger("bimguard.sim.longhorn.kube")

Obj = dict[str, Any]


__all__ = ["AlreadyExists", "Conflict", "Forbidden", "Invalid", "KubeError", "NotFound", "LonghornClient", "api_client"]


def api_client(url: str, token: str | None = None) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = url
    cfg.verify_ssl = False
    cfg.connection_pool_maxsize = 0  # no limit: every simulated manager of a cluster may share it
    if token:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(configuration=cfg)


class LonghornClient:
    """Typed-as-dicts access to ``longhorn.io/v1beta2`` objects and core Events in one namespace."""

    def __init__(self, url: str, *, component: str, host: str = "", namespace: str = NAMESPACE,
                 token: str | None = None, shared: "LonghornClient | None" = None) -> None:
        self.url = url
        self.namespace = namespace
        self.component = component
        self.host = host
        # Every longhorn-manager runs as the same service account; sharing one connection pool
        # spares a cluster of N managers N SSL contexts (~25 ms each) and N pools.
        self._owned = shared is None
        self._client = api_client(url, token) if shared is None else shared._client
        self.custom = client.CustomObjectsApi(self._client)
        self.core = client.CoreV1Api(self._client)
        #: Called after every successful write with (plural, written object or None, name) --
        #: the managers use it to wait for their informer cache (lm datastore verifyUpdate).
        self.after_write: Callable[[str, Obj | None, str], Awaitable[None]] | None = None

    async def _after(self, plural: str, obj: Obj | None, name: str) -> None:
        if self.after_write is not None:
            await self.after_write(plural, obj, name)

    async def close(self) -> None:
        if self._owned:
            await self._client.close()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except ApiException as exc:
            raise _translate(exc) from None

    async def get(self, plural: str, name: str) -> Obj:
        return await self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name)

    async def get_or_none(self, plural: str, name: str) -> Obj | None:
        try:
            return await self.get(plural, name)
        except NotFound:
            return None

    async def list(self, plural: str, label_selector: str | None = None) -> list[Obj]:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        res = await self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, **kwargs)
        return list(res.get("items") or [])

    async def create(self, plural: str, body: Obj) -> Obj:
        body = {"apiVersion": f"{GROUP}/{VERSION}", **body}
        body.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        out = await self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, body)
        await self._after(plural, out, out["metadata"]["name"])
        return out

    async def replace(self, plural: str, body: Obj) -> Obj:
        out = await self._call(
            self.custom.replace_namespaced_custom_object, GROUP, VERSION, self.namespace, plural,
            body["metadata"]["name"], body,
        )
        await self._after(plural, out, out["metadata"]["name"])
        return out

    async def replace_status(self, plural: str, body: Obj) -> Obj:
        """PUT .../<plural>/<name>/status with the body's resourceVersion (lm datastore/longhorn.go:2702)."""
        out = await self._call(
            self.custom.replace_namespaced_custom_object_status, GROUP, VERSION, self.namespace, plural,
            body["metadata"]["name"], body,
        )
        await self._after(plural, out, out["metadata"]["name"])
        return out

    async def delete(self, plural: str, name: str) -> None:
        try:
            res = await self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name)
        except NotFound:
            return
        # With finalizers the object stays (deletionTimestamp set); the response is then the object.
        still = isinstance(res, dict) and res.get("kind") not in (None, "Status") and res.get("metadata", {}).get("finalizers")
        await self._after(plural, res if still else None, name)

    async def event(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on ``obj`` like client-go's EventRecorder (best effort)."""
        meta = obj.get("metadata", {})
        now = SimClock.now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'obj')}.{secrets.token_hex(8)}", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", ""),
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", self.namespace),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.core.create_namespaced_event(self.namespace, body)
        except ApiException as exc:
            log.warning("failed to record event %s/%s: %s", reason, message, _translate(exc))
        except Exception as exc:  # events are best effort, as in client-go
            log.warning("failed to record event %s/%s: %s", reason, message, exc)

    async def watch(self, plural: str, stop: asyncio.Event | None = None) -> AsyncIterator[tuple[str, Obj]]:
        """Yield (type, object) from a watch on ``plural``; reconnects are the caller's job."""
        w = watch.Watch()
        try:
            async for ev in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural,
                                     timeout_seconds=300):
                yield str(ev.get("type")), ev.get("object") or {}
        finally:
            w.stop()
