"""Informer caches for the simulated longhorn-managers: list + watch over HTTP, reads from memory.

longhorn-manager reads everything from client-go informers (all with a 30 s resync, lm v1.7.2
util/client/client.go:92) and writes with the *cached* object's resourceVersion; after a write
the datastore waits until its informer has seen the new version (``verifyUpdate``/
``verifyCreation``, lm datastore/longhorn.go:3819). The sim does the same with one shared cache
per resource for the whole simulated cluster (a simplification: real managers each have their
own informers, so the sim's caches are never *less* fresh than a real manager's). Without it every
manager would re-list every resource on every event, which does not scale past a few nodes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Callable

from kubernetes_asyncio import watch

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import GROUP, VERSION
from bimguard.sim.longhorn.kube import LonghornClient, Obj

log = logging.getLogger("bimguard.sim.longhorn.informer")

# How long a manager waits for its cache to show its own write, then carries on regardless: lm
# datastore verifyUpdate/verifyCreation, VerificationRetryCounts 20 x VerificationRetryInterval
# 100 ms (`datastore/longhorn.go:40-43,3797-3830 @v1.7.2`). A cache lagging longer (a starved
# machine) lets a controller act twice on the same state, in Longhorn as here.
VERIFY_TIMEOUT = 2.0


def _rv(obj: Obj | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    """Equality-based label selectors only (``a=b,c=d``), which is all the sim uses."""
    if not selector:
        return True
    labels = labels or {}
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k.strip()) != v.strip():
            return False
    return True


class Informer:
    """The cache of one resource: LIST, then WATCH from the list's resourceVersion; relist on errors."""

    def __init__(self, client: LonghornClient, plural: str, clock: SimClock,
                 on_event: Callable[[str, Obj | None], None]) -> None:
        self.client = client
        self.plural = plural
        self.clock = clock
        self.on_event = on_event
        self.objects: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        # Set (and replaced) on every change. Not an asyncio.Condition: with 500 nodes on Python
        # 3.11, a wait_for timeout cancelling Condition.wait raised "Lock is not acquired" (the
        # wait_for/cancellation races of cpython gh-86296), and the cluster stopped converging.
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer-{self.plural}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)
            self._task = None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _relist(self) -> str:
        res = await self.client._call(self.client.custom.list_namespaced_custom_object, GROUP, VERSION,
                                      self.client.namespace, self.plural)
        self.objects = {o["metadata"]["name"]: o for o in res.get("items") or []}
        self.synced.set()
        self._notify()
        self.on_event(self.plural, None)  # everything may have changed
        return str((res.get("metadata") or {}).get("resourceVersion") or "")

    async def _run(self) -> None:
        while True:
            try:
                rv = await self._relist()
                w = watch.Watch()
                async for ev in w.stream(self.client.custom.list_namespaced_custom_object, GROUP, VERSION,
                                         self.client.namespace, self.plural, resource_version=rv,
                                         timeout_seconds=300):
                    etype, obj = str(ev.get("type")), ev.get("object") or {}
                    if etype == "ERROR":
                        break  # e.g. 410 Expired: relist
                    name = (obj.get("metadata") or {}).get("name")
                    if not name or etype == "BOOKMARK":
                        continue
                    if etype == "DELETED":
                        self.objects.pop(name, None)
                    elif _rv(obj) >= _rv(self.objects.get(name)):
                        self.objects[name] = obj
                    self._notify()
                    self.on_event(self.plural, obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # dropped watch, injected fault, ...: relist shortly
                log.debug("informer %s: %s; relisting", self.plural, exc)
                await self.clock.sleep(1.0)

    # ---------------------------------------------------------------- reads
    def get(self, name: str) -> Obj | None:
        obj = self.objects.get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, label_selector: str | None = None) -> list[Obj]:
        """The cached objects themselves, NOT copies (like an informer lister): callers must
        ``copy.deepcopy`` before mutating. Copying every list made large clusters CPU-bound."""
        return [o for o in self.objects.values()
                if _selector_matches(label_selector, (o.get("metadata") or {}).get("labels"))]

    async def wait_until(self, name: str, *, rv: int | None = None, gone: bool = False,
                         timeout: float = VERIFY_TIMEOUT) -> bool:
        """Wait until the cache holds ``name`` at ``rv`` or newer (or no longer holds it)."""
        def ok() -> bool:
            cur = self.objects.get(name)
            return cur is None if gone else (cur is not None and _rv(cur) >= (rv or 0))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ok():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return ok()
        return True


class Caches:
    """One :class:`Informer` per resource the managers read."""

    def __init__(self, client: LonghornClient, plurals: tuple[str, ...], clock: SimClock,
                 on_event: Callable[[str, Obj | None], None]) -> None:
        self.informers = {p: Informer(client, p, clock, on_event) for p in plurals}

    def start(self) -> None:
        for i in self.informers.values():
            i.start()

    async def stop(self) -> None:
        for i in self.informers.values():
            await i.stop()

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers.values())), timeout)

    # async signatures so the managers' code reads like the HTTP client's
    async def get(self, plural: str, name: str) -> Obj:
        obj = self.informers[plural].get(name)
        if obj is None:
            from bimguard.sim.longhorn.kube import NotFound

            raise NotFound(404, "NotFound", f'{plural}.{GROUP} "{name}" not found')
        return obj

    async def get_or_none(self, plural: str, name: str) -> Obj | None:
        return self.informers[plural].get(name)

    def peek(self, plural: str, name: str) -> Obj | None:
        """The cached object itself (read-only!), without the copy ``get`` makes."""
        return self.informers[plural].objects.get(name)

    async def list(self, plural: str, label_selector: str | None = None) -> list[Obj]:
        return self.informers[plural].list(label_selector)

    async def wait_newer(self, plural: str, obj: Obj) -> None:
        """Wait (at most VERIFY_TIMEOUT) until the cache holds a newer version of ``obj`` than the
        one a write was just refused for with 409."""
        inf = self.informers.get(plural)
        if inf is not None:
            await inf.wait_until(obj["metadata"]["name"], rv=_rv(obj) + 1)

    async def verify(self, plural: str, obj: Obj | None, name: str | None = None) -> None:
        """lm datastore verifyCreation/verifyUpdate: wait until the cache reflects our write."""
        inf = self.informers.get(plural)
        if inf is None:
            return
        if obj is None:
            if name:
                await inf.wait_until(name, gone=True)
            return
        await inf.wait_until(obj["metadata"]["name"], rv=_rv(obj))
