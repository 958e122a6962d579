"""Leader election on a coordination.k8s.io/v1 Lease, so one webhook replica drives rewrites.

Every webhook replica answers admission reviews; only the leader runs the rewrite controller
(it creates pods and writes node status). The protocol is client-go's `leaderelection` with a
`LeaseLock`, re-described:

- The lease is free when it does not exist, names no holder, or its holder has not renewed it for
  `leaseDurationSeconds`. "Not renewed" is judged by when *this* process last saw the lease
  change (a monotonic clock), not by comparing `renewTime` with the local wall clock: replicas'
  clocks may disagree, and a follower with a fast clock must not steal a live lease. A follower
  therefore waits one full lease duration after the last renewal it observed.
- Every write carries the resourceVersion just read, so of two candidates exactly one wins
  (the other gets 409 and stays a follower); a create races the same way (409 AlreadyExists).
- The leader renews every `retry_period`. `is_leader` turns False as soon as `renew_deadline`
  has passed since the last successful renewal, even if the renewing task is stalled, and
  `renew_deadline < lease_duration`, so the old leader stops acting before anyone else can
  acquire. (The controller's writes are RV-guarded and idempotent as well, so even a brief
  overlap cannot make two different outcomes; election only avoids duplicated work.)
- On a clean stop the leader releases the lease (empty holder, 1 s duration), so a successor
  takes over at its next retry instead of after a full lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable

from kubernetes_asyncio import client

from bimguard.kube import LEASES, AlreadyExists, Conflict, Kube, KubeError, NotFound

log = logging.getLogger("bimguard.leader")

DEFAULT_LEASE_NAME = "bimguard-controller"


def default_identity() -> str:
    """The pod name (downward API `POD_NAME`, else the hostname, which is the pod name in a pod)."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def micro_time(dt: datetime | None = None) -> str:
    """metav1.MicroTime as the API server writes it."""
    return (dt or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; see the module docstring.

    Use `await elector.run()` in a task (or `async with elector:`), read `is_leader` before
    acting, and `await elector.stop()` to release the lease. Callbacks run in the event loop.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str = DEFAULT_LEASE_NAME,
                 identity: str | None = None, *, lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, on_started_leading: Callable[[], None] | None = None,
                 on_stopped_leading: Callable[[], None] | None = None, release_on_stop: bool = True) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.kube = Kube(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.release_on_stop = release_on_stop
        self._leading = False
        self._last_renew = -math.inf  # monotonic time of our last successful acquire/renew
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at = -math.inf  # monotonic time we saw it change
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.transitions = 0  # times this process became leader

    # ------------------------------------------------------------------ state
    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._last_renew + self.renew_deadline

    @property
    def holder(self) -> str:
        """The holder as last observed ("" if none or unknown)."""
        return str(self._observed[0] or "") if self._observed else ""

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Campaign, lead, and campaign again after losing the lease, until `stop()`."""
        self._stop.clear()
        try:
            while not self._stop.is_set():
                # Stamped before the request: the write lands after this moment, so every other
                # replica observes it later, and our deadline ends before their expiry can.
                attempt_started = time.monotonic()
                try:
                    ok = await self.try_acquire_or_renew()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # API down, timeouts: not fatal, the deadline decides
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    ok = False
                if ok:
                    self._last_renew = attempt_started
                    if not self._leading:
                        self._set_leading(True)
                elif self._leading and not self.is_leader:
                    log.warning("lease %s/%s: could not renew within %.1fs, stepping down",
                                self.namespace, self.name, self.renew_deadline)
                    self._set_leading(False)
                elif self._leading and self._observed and self._observed[0] != self.identity:
                    self._set_leading(False)  # someone else holds it now: we lost a race
                await self._sleep(self.retry_period)
        finally:
            if self._leading:
                self._set_leading(False)
                if self.release_on_stop:
                    await self._release()

    async def renew_now(self) -> bool:
        """One acquire-or-renew now, outside the loop's rhythm: a holder whose renewals were late
        (an overloaded API server) takes the lease back if no one else did meanwhile."""
        for _ in range(5):  # a 409 from our own loop's renewal landing meanwhile is not a loss
            attempt_started = time.monotonic()
            try:
                ok = await self.try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001 - as in run(): the caller decides what a failure means
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                return False
            if ok:
                self._last_renew = attempt_started
                if not self._leading:
                    self._set_leading(True)
                return True
            if self.holder not in ("", self.identity):
                return False  # someone else holds it
        return False

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"leader-{self.name}-{self.identity}")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=self.retry_period + 10)
            self._task = None

    async def __aenter__(self) -> "LeaderElector":
        self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def wait_leading(self, timeout: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self.is_leader:
            if end is not None and loop.time() >= end:
                return False
            await asyncio.sleep(min(0.05, self.retry_period))
        return True

    # ------------------------------------------------------------------ protocol
    async def try_acquire_or_renew(self) -> bool:
        """One round: True if we hold the lease afterwards."""
        now = datetime.now(timezone.utc)
        lease = await self.kube.get_or_none(LEASES, self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, acquired=now, transitions=0)}
            try:
                created = await self.kube.create(LEASES, self.namespace, body)
            except (AlreadyExists, Conflict):
                return False
            self._observe(created)
            return True
        spec = lease.get("spec") or {}
        self._observe(lease)
        holder = spec.get("holderIdentity") or ""
        mine = holder == self.identity
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and not mine and time.monotonic() < self._observed_at + duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = spec.get("acquireTime") if mine else None
        lease["spec"] = self._spec(now, acquired=acquired or now,
                                   transitions=transitions if mine else transitions + 1)
        try:
            updated = await self.kube.replace(LEASES, self.namespace, lease)
        except (Conflict, NotFound):
            return False  # someone wrote in between (or deleted it): re-read next round
        self._observe(updated)
        return True

    def _spec(self, now: datetime, *, acquired: datetime | str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(math.ceil(self.lease_duration)),
            "acquireTime": acquired if isinstance(acquired, str) else micro_time(acquired),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        key = (spec.get("holderIdentity") or "", spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        if key != self._observed:
            self._observed = key
            self._observed_at = time.monotonic()

    async def _release(self) -> None:
        try:
            lease = await self.kube.get_or_none(LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time())
            await self.kube.replace(LEASES, self.namespace, lease)
        except (KubeError, OSError, asyncio.TimeoutError) as exc:
            log.info("lease %s/%s: release failed (it will expire): %s", self.namespace, self.name, exc)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if leading:
            self.transitions += 1
            log.info("lease %s/%s: %s is now the leader", self.namespace, self.name, self.identity)
        else:
            self._last_renew = -math.inf
            log.info("lease %s/%s: %s stopped leading", self.namespace, self.name, self.identity)
        callback = self.on_started_leading if leading else self.on_stopped_leading
        if callback is not None:
            try:
                callback()
            except Exception:  # a callback bug must not end the campaign
                log.exception("leader callback failed")

    async def _sleep(self, seconds: float) -> None:
        # asyncio.wait, not wait_for: wait_for around Event.wait can swallow a cancellation (3.11).
        waiter = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter}, timeout=seconds)
        finally:
            waiter.cancel()
