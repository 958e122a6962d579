"""What happened in an emulated cluster, from the emulator's own records: for tests that must
judge an outcome without trusting the product's report.

:class:`History` records every change the API server stores (in resourceVersion order, the
objects themselves: the store never mutates a stored object) and answers the questions the
invariants ask, e.g. "did this disk's recorded UUID change while Replicas still named it?".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from bimguard.sim.store import Store, WatchEvent


@dataclass(frozen=True)
class Change:
    rv: int
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    name: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


class History:
    """Records changes of the given resources (plural names; all if empty) until ``close()``."""

    def __init__(self, store: Store, *plurals: str) -> None:
        self.plurals = set(plurals)
        self.changes: list[Change] = []
        self._remove: Callable[[], None] | None = store.add_listener(self._record)

    def _record(self, ev: WatchEvent) -> None:
        if self.plurals and ev.key.plural not in self.plurals:
            return
        self.changes.append(Change(ev.rv, ev.key.plural, ev.type, ev.obj["metadata"]["name"], ev.obj, ev.old))

    def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def of(self, plural: str, name: str | None = None) -> Iterator[Change]:
        return (c for c in self.changes if c.plural == plural and (name is None or c.name == name))

    def first(self, plural: str, name: str, pred: Callable[[dict[str, Any]], bool]) -> int | None:
        """The resourceVersion at which ``pred(object)`` first held for that object, if ever."""
        return next((c.rv for c in self.of(plural, name) if c.type != "DELETED" and pred(c.obj)), None)

    def deletion_requested(self, plural: str, name: str) -> int | None:
        """When the object got its deletionTimestamp (or went, without finalizers)."""
        for c in self.of(plural, name):
            if c.type == "DELETED" or (c.obj.get("metadata") or {}).get("deletionTimestamp"):
                return c.rv
        return None

    def at(self, plural: str, rv: int) -> dict[str, dict[str, Any]]:
        """The objects of `plural` that existed (and were not being deleted) right after `rv`."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.changes:
            if c.rv > rv:
                break
            if c.plural != plural:
                continue
            if c.type == "DELETED" or (c.obj.get("metadata") or {}).get("deletionTimestamp"):
                out.pop(c.name, None)
            else:
                out[c.name] = c.obj
        return out

    def uuid_changes(self) -> Iterator[tuple[int, str, str, str, str]]:
        """(rv, node, disk, old, new) for every stored change of a recorded disk UUID (first
        records, "" -> X, are not changes)."""
        for c in self.of("nodes"):
            if c.type != "MODIFIED" or c.old is None:
                continue
            before = (c.old.get("status") or {}).get("diskStatus") or {}
            after = (c.obj.get("status") or {}).get("diskStatus") or {}
            for disk, entry in after.items():
                old = ((before.get(disk) or {}).get("diskUUID") or "")
                new = (entry or {}).get("diskUUID") or ""
                if old and new and old != new:
                    yield c.rv, c.name, disk, old, new
