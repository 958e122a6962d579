"""Fault injection for the emulated API server: errors, latency, dropped watches, compaction.

Rules match a verb (get, list, watch, create, update, patch, delete) and a resource
(`ResourceKey` or its string form; None = any) and, for subresources, the subresource name.
Randomness comes from one seeded `random.Random`, so a test run with the same seed and the same
request sequence sees the same faults. An unreachable webhook needs no rule here: remove its
entry from `ApiServer.webhook_hosts` or point it at a closed port.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from bimguard.sim.resources import ResourceKey
from bimguard.sim.store import ApiError, Store

_ERROR_BODIES = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request (injected fault)"),
    504: ("Timeout", "The server was unable to return a response in the time allotted, but may still be processing the request (injected fault)"),
}


@dataclass
class ErrorRule:
    rate: float
    code: int
    verbs: frozenset[str] | None
    resource: ResourceKey | None
    subresource: str | None
    remaining: int | None  # None = unlimited
    retry_after: int = 1  # a 429's Retry-After (seconds), as API Priority and Fairness sends it


@dataclass
class LatencyRule:
    seconds: float
    verbs: frozenset[str] | None
    resource: ResourceKey | None


class Faults:
    def __init__(self, store: Store, seed: int = 0) -> None:
        self._store = store
        self._random = random.Random(seed)
        self.errors: list[ErrorRule] = []
        self.latencies: list[LatencyRule] = []
        self.injected = 0  # how many errors were injected so far
        self.injected_by_code: Counter[int] = Counter()

    def seed(self, seed: int) -> None:
        self._random = random.Random(seed)

    def error_rate(self, rate: float, code: int = 500, *, verbs: str | list[str] | None = None,
                   resource: ResourceKey | str | None = None, subresource: str | None = None,
                   count: int | None = None, retry_after: int = 1) -> ErrorRule:
        """Fail matching requests with probability `rate` (1.0 = always; `count` caps how many).
        A 429 carries `Retry-After: <retry_after>` and `details.retryAfterSeconds`, as kube-apiserver's
        throttling answers do; the request was not served."""
        rule = ErrorRule(rate, code, _verbs(verbs), ResourceKey.parse(resource) if resource else None, subresource, count,
                         retry_after)
        self.errors.append(rule)
        return rule

    def latency(self, seconds: float, *, verbs: str | list[str] | None = None,
                resource: ResourceKey | str | None = None) -> LatencyRule:
        rule = LatencyRule(seconds, _verbs(verbs), ResourceKey.parse(resource) if resource else None)
        self.latencies.append(rule)
        return rule

    def clear(self) -> None:
        self.errors.clear()
        self.latencies.clear()

    def drop_watches(self) -> int:
        """Close every open watch stream now; returns how many were open."""
        return self._store.drop_watches()

    def compact(self) -> int:
        """Compact history at the current RV: older watch RVs and continue tokens now get 410."""
        return self._store.compact()

    # -- used by the HTTP layer --------------------------------------------------------------

    def delay_for(self, verb: str, key: ResourceKey | None) -> float:
        return sum(r.seconds for r in self.latencies if _matches(r.verbs, r.resource, verb, key))

    def error_for(self, verb: str, key: ResourceKey | None, subresource: str | None = None) -> ApiError | None:
        for rule in self.errors:
            if not _matches(rule.verbs, rule.resource, verb, key):
                continue
            if rule.subresource is not None and rule.subresource != (subresource or ""):
                continue
            if rule.remaining is not None and rule.remaining <= 0:
                continue
            if self._random.random() < rule.rate:
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.injected += 1
                self.injected_by_code[rule.code] += 1
                reason, message = _ERROR_BODIES.get(rule.code, ("InternalError", f"injected fault {rule.code}"))
                headers = {"Retry-After": str(rule.retry_after)} if rule.code == 429 else None
                details = {"retryAfterSeconds": rule.retry_after} if rule.code == 429 else None
                return ApiError(rule.code, reason, message, details, headers)
        return None


def _verbs(verbs: str | list[str] | None) -> frozenset[str] | None:
    if verbs is None:
        return None
    return frozenset([verbs] if isinstance(verbs, str) else verbs)


def _matches(verbs: frozenset[str] | None, resource: ResourceKey | None, verb: str, key: ResourceKey | None) -> bool:
    return (verbs is None or verb in verbs) and (resource is None or resource == key)
