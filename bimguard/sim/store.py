"""The object store of the emulated API server and its write pipeline.

`ResourceKey` (see resources.py) is a frozen dataclass (group, version, plural); every public
method also accepts the string forms "v1/pods" and "longhorn.io/v1beta2/nodes".

Semantics follow kube-apiserver's generic registry over etcd3 (staging/src/k8s.io/apiserver/pkg/
registry/generic/registry/store.go and pkg/storage/etcd3/store.go): one global, monotonic
resourceVersion; bounded event history with compaction (410 Expired past it); an update that
changes nothing is not written; deletion with finalizers only sets deletionTimestamp.
Errors are `ApiError`s carrying a metav1.Status body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import msgspec

from bimguard.sim.patch import PatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from bimguard.sim.resources import BUILTIN, Registry, ResourceKey, ResourceType, resource_type_from_crd
from bimguard.sim.schema import FieldError, apply_defaults, prune, validate

log = logging.getLogger(__name__)


# --- errors ----------------------------------------------------------------------------------
# Constructors mirror k8s.io/apimachinery/pkg/api/errors/errors.go (NewNotFound, NewConflict,
# NewInvalid, ...): clients key off `code` and `reason`, people off `message`.

class ApiError(Exception):
    """An API failure: `.status` (HTTP code), `.reason`, `.body` (a metav1.Status dict)."""

    def __init__(self, status: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    @property
    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.status,
        }
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.reason!r}, {self.message!r})"


def _details(key: ResourceKey, name: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if key.group:
        out["group"] = key.group
    out["kind"] = key.plural
    out.update(extra)
    return out


def not_found(key: ResourceKey, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{key.group_resource} "{name}" not found', _details(key, name))


def already_exists(key: ResourceKey, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{key.group_resource} "{name}" already exists', _details(key, name))


def conflict(key: ResourceKey, name: str, detail: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {key.group_resource} "{name}": {detail}',
                    _details(key, name))


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(rt: ResourceType, name: str, errors: list[FieldError]) -> ApiError:
    # field.ErrorList.ToAggregate: one error prints bare, several as "[a, b]".
    agg = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details: dict[str, Any] = {"name": name}
    if rt.key.group:
        details["group"] = rt.key.group
    details["kind"] = rt.kind
    details["causes"] = [e.cause() for e in errors]
    return ApiError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {agg}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}")


def method_not_allowed(verb: str, key: ResourceKey) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"{verb} is not supported on resources of kind \"{key.group_resource}\"")


def forbidden_finalizers(rt: ResourceType, name: str) -> ApiError:
    return invalid(rt, name, [FieldError("FieldValueForbidden", "metadata.finalizers",
                                         "no new finalizers can be added if the object is being deleted")])


# --- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return has and value == self.values[0]
        if self.op == "!=":
            return not has or value != self.values[0]
        if self.op == "in":
            return has and value in self.values
        if self.op == "notin":
            return not has or value not in self.values
        if self.op == "exists":
            return has
        return not has


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)$")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse the string form of a label selector (k8s.io/apimachinery/pkg/labels/selector.go)."""
    if not text:
        return ()
    reqs = []
    for part in _split_top(text):
        m = _SET_RE.match(part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:].strip(), "!exists"))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(Requirement(k.strip(), "!=", (v.strip(),)))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(Requirement(k.strip(), "=", (v.strip(),)))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(Requirement(k.strip(), "=", (v.strip(),)))
        elif re.fullmatch(r"[A-Za-z0-9_./-]+", part):
            reqs.append(Requirement(part, "exists"))
        else:
            raise bad_request(f"unable to parse requirement: found '{part}', expected: identifier")
    return tuple(reqs)


def label_selector_from_struct(sel: dict | None) -> tuple[Requirement, ...] | None:
    """metav1.LabelSelector (matchLabels/matchExpressions); None for an absent selector."""
    if sel is None:
        return None
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in sel.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


# Field selectors each resource supports beyond metadata.name/namespace (the per-type
# GetAttrs/`AddFieldLabelConversionFunc` lists of kube-apiserver, abridged).
_FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName"),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
               "reason", "reportingComponent", "source", "type"),
    "secrets": ("type",),
    "namespaces": ("status.phase",),
}


def parse_field_selector(text: str | None, rt: "ResourceType") -> tuple[tuple[str, str, str], ...]:
    if not text:
        return ()
    allowed = ("metadata.name", "metadata.namespace") + (() if rt.crd else _FIELD_LABELS.get(rt.key.plural, ()))
    out = []
    for part in _split_top(text):
        m = re.fullmatch(r"([^!=]+)(==|!=|=)(.*)", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field_, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field_ not in allowed:
            raise bad_request(f'field label not supported: {field_}')
        out.append((field_, "!=" if op == "!=" else "=", value))
    return tuple(out)


def _field_value(obj: dict, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def fields_match(reqs: tuple[tuple[str, str, str], ...], obj: dict) -> bool:
    for field_, op, value in reqs:
        if (_field_value(obj, field_) == value) != (op == "="):
            return False
    return True


# --- the store -------------------------------------------------------------------------------


def copy_json(obj: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(obj))


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# names.SimpleNameGenerator: 5 characters from an alphabet without vowels and look-alikes.
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    key: ResourceKey
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict
    old: dict | None


@dataclass(eq=False)
class Watcher:
    """One open watch; the HTTP layer drains `queue` (None = the stream must end)."""

    key: ResourceKey
    namespace: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[tuple[str, str, str], ...]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def _passes(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, meta.get("labels")) and fields_match(self.fields, obj)

    def translate(self, ev: WatchEvent) -> tuple[str, dict] | None:
        """Event as this watcher sees it; selector transitions become ADDED/DELETED like the
        watch cache does (staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go
        `convertToWatchEvent`)."""
        if ev.key != self.key:
            return None
        cur, old = self._passes(ev.obj), self._passes(ev.old)
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if cur else None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if cur else None
        if cur and old:
            return ("MODIFIED", ev.obj)
        if cur:
            return ("ADDED", ev.obj)
        if old:
            gone_obj = copy_json(ev.old)
            gone_obj["metadata"]["resourceVersion"] = str(ev.rv)
            return ("DELETED", gone_obj)
        return None


@dataclass
class ListPage:
    items: list[dict]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None


class Store:
    """All objects of the emulated cluster, one global resourceVersion counter (as etcd's revision).

    Every write goes through one pipeline, whether it arrives over HTTP or in-process:
    prune unknown fields -> [mutating admission: HTTP only, see apiserver.py] ->
    resourceVersion precondition -> create/update/status strategy -> validation -> store + event.
    In-process writes through the public methods (`create`, `update`, `patch`, `delete`) skip
    admission: they model a component writing straight to storage, which is what fixtures want.
    Stored objects are never mutated in place, so list snapshots (continue tokens) and event
    history can share them; callers always receive copies.
    """

    def __init__(self, registry: Registry | None = None, *, history: int = 10000, seed: int = 0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.registry = registry or Registry()
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(timezone.utc))
        self._objects: dict[ResourceKey, dict[tuple[str, str], dict]] = {}
        self._rv = 0
        self._events: deque[WatchEvent] = deque()
        self._history = history
        self._floor = 0  # watches and continue tokens from an RV below this are expired
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[WatchEvent], None]] = []
        self._snapshots: OrderedDict[str, list[dict]] = OrderedDict()
        self._random = random.Random(seed)
        for rt in BUILTIN:
            self.registry.add(rt)
            self._objects.setdefault(rt.key, {})

    # -- lookups ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def resource_type(self, resource: ResourceKey | str) -> ResourceType:
        key = ResourceKey.parse(resource)
        rt = self.registry.get(key)
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": key.group, "kind": key.plural} if key.group else {"kind": key.plural})
        return rt

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], dict]:
        return self._objects.setdefault(rt.key, {})

    @staticmethod
    def _ns(rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _current(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._bucket(rt).get((self._ns(rt, namespace), name))
        if obj is None:
            raise not_found(rt.key, name)
        return obj

    def get(self, resource: ResourceKey | str, namespace: str | None, name: str) -> dict:
        rt = self.resource_type(resource)
        return copy_json(self._current(rt, namespace, name))

    def list(self, resource: ResourceKey | str, namespace: str | None = None,
             label_selector: str | None = None, *, field_selector: str | None = None) -> tuple[list[dict], str]:
        page = self.list_page(resource, namespace, label_selector, field_selector=field_selector)
        return copy_json(page.items), page.resource_version

    def list_page(self, resource: ResourceKey | str, namespace: str | None = None, label_selector: str | None = None,
                  *, field_selector: str | None = None, limit: int = 0, continue_token: str = "") -> ListPage:
        """One page of a list; `continue_token` pages through a snapshot taken at the first page
        (etcd serves continuations at the first page's revision, hence consistent pages)."""
        rt = self.resource_type(resource)
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                rv, snap_id, offset = int(token["rv"]), str(token["id"]), int(token["offset"])
            except Exception:
                raise bad_request("continue key is not valid: illegal base64 data") from None
            if rv < self._floor or snap_id not in self._snapshots:
                raise gone("The provided continue parameter is too old to display a consistent list result. "
                           "You can start a new list without the continue parameter.")
            items = self._snapshots[snap_id]
        else:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, rt)
            ns = self._ns(rt, namespace) if rt.namespaced and namespace else None
            items = [
                obj for (ons, _), obj in sorted(self._bucket(rt).items())
                if (ns is None or ons == ns)
                and labels_match(labels, obj["metadata"].get("labels"))
                and fields_match(fields, obj)
            ]
            rv, snap_id, offset = self._rv, "", 0
        if limit <= 0 or offset + limit >= len(items):
            return ListPage(items[offset:], str(rv))
        if not snap_id:
            snap_id = uuid.uuid4().hex
            self._snapshots[snap_id] = items
            while len(self._snapshots) > 64:
                self._snapshots.popitem(last=False)
        token = base64.urlsafe_b64encode(json.dumps({"rv": rv, "id": snap_id, "offset": offset + limit}).encode()).decode()
        return ListPage(items[offset:offset + limit], str(rv), token, len(items) - offset - limit)

    # -- watch -----------------------------------------------------------------------------

    def watch(self, resource: ResourceKey | str, namespace: str | None = None, label_selector: str | None = None,
              *, field_selector: str | None = None, resource_version: str | None = None,
              send_initial_events: bool | None = None) -> Watcher:
        """Open a watch. Replays history after `resource_version`; with no RV (or "0", or
        `send_initial_events`) the current objects come first as ADDED, like the watch cache.
        Raises 410 Expired when the RV is older than the retained history."""
        rt = self.resource_type(resource)
        w = Watcher(rt.key, self._ns(rt, namespace) if rt.namespaced and namespace else None,
                    parse_label_selector(label_selector), parse_field_selector(field_selector, rt))
        initial = send_initial_events if send_initial_events is not None else resource_version in (None, "", "0")
        if initial:
            for (_, _), obj in sorted(self._bucket(rt).items()):
                if w._passes(obj):
                    w.queue.put_nowait(("ADDED", obj))
        else:
            try:
                since = int(resource_version or "0")
            except ValueError:
                raise bad_request(f'invalid resource version: "{resource_version}"') from None
            if since < self._floor:
                raise gone(f"too old resource version: {since} ({self._floor})")
            for ev in self._events:
                if ev.rv > since:
                    out = w.translate(ev)
                    if out:
                        w.queue.put_nowait(out)
        self._watchers.add(w)
        return w

    def stop_watch(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def drop_watches(self) -> int:
        """End every open watch stream (clients must re-watch); returns how many were open."""
        n = len(self._watchers)
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        self._watchers.clear()
        return n

    def compact(self) -> int:
        """Forget all history: watches and continue tokens from older RVs now get 410."""
        self._floor = self._rv
        self._events.clear()
        self._snapshots.clear()
        return self._floor

    def add_listener(self, fn: Callable[[WatchEvent], None]) -> Callable[[], None]:
        """Call ``fn`` with every stored change, in resourceVersion order (``bimguard.sim.history``);
        returns a function that removes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def _emit(self, rt: ResourceType, type_: str, obj: dict, old: dict | None) -> None:
        ev = WatchEvent(self._rv, rt.key, type_, obj, old)
        for fn in self._listeners:
            fn(ev)
        self._events.append(ev)
        while len(self._events) > self._history:
            self._floor = self._events.popleft().rv
        for w in list(self._watchers):
            out = w.translate(ev)
            if out:
                w.queue.put_nowait(out)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # -- the write pipeline ----------------------------------------------------------------

    def decode(self, rt: ResourceType, obj: Any, *, strict: bool = False) -> tuple[dict, list[str]]:
        """Prune unknown fields; returns (object, warnings). Strict field validation turns
        them into a 400 (apiserver `fieldValidation=Strict`)."""
        if not isinstance(obj, dict):
            raise bad_request("the object provided is unrecognized (must be of type object)")
        if not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("metadata: expected an object")
        pruned, dropped = prune(obj, rt.schema)
        if rt.crd:
            pruned = apply_defaults(pruned, rt.schema)
        # Sorted, so messages do not depend on map order (Go randomises it).
        warnings = [f'unknown field "{p}"' for p in sorted(dropped)]
        if strict and warnings:
            raise bad_request("strict decoding error: " + ", ".join(warnings))
        return pruned, warnings

    @staticmethod
    def check_type_meta(rt: ResourceType, body: Any) -> None:
        """What the REST decoders insist on for a request body (handlers/create.go, update.go):
        custom resources go through the unstructured decoder, which needs `kind` and
        `apiVersion`; built-ins default them from the URL. A body for another group-version is
        a 400 either way. (In-process writes skip this: they have no wire format.)"""
        if not isinstance(body, dict):
            raise bad_request("the object provided is unrecognized (must be of type object)")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if rt.crd and not kind:
            raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body, separators=(',', ':'))}'")
        if rt.crd and not api_version:
            raise bad_request(f"Object 'apiVersion' is missing in '{json.dumps(body, separators=(',', ':'))}'")
        if api_version and api_version != rt.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API version "
                              f"({rt.api_version})")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")

    def create(self, resource: ResourceKey | str, obj: dict, *, dry_run: bool = False) -> dict:
        rt = self.resource_type(resource)
        decoded, _ = self.decode(rt, copy_json(obj))
        return copy_json(self.commit_create(rt, decoded, decoded.get("metadata", {}).get("namespace"), dry_run=dry_run))

    def update(self, resource: ResourceKey | str, obj: dict, *, subresource: str | None = None,
               dry_run: bool = False) -> dict:
        rt = self.resource_type(resource)
        decoded, _ = self.decode(rt, copy_json(obj))
        meta = decoded.get("metadata", {})
        return copy_json(self.commit_update(rt, decoded, meta.get("namespace"), meta.get("name", ""),
                                        subresource=subresource, dry_run=dry_run))

    def patch(self, resource: ResourceKey | str, namespace: str | None, name: str, patch: Any,
              patch_type: str = "application/merge-patch+json", *, subresource: str | None = None) -> dict:
        """In-process PATCH (no admission); same semantics as the HTTP verb."""
        rt = self.resource_type(resource)
        current = self._current(rt, namespace, name)
        patched = apply_patch(rt, current, patch, patch_type)
        decoded, _ = self.decode(rt, patched)
        pinned = decoded.setdefault("metadata", {}).get("resourceVersion") or current["metadata"]["resourceVersion"]
        decoded["metadata"]["resourceVersion"] = pinned
        return copy_json(self.commit_update(rt, decoded, namespace, name, subresource=subresource))

    def delete(self, resource: ResourceKey | str, namespace: str | None, name: str, *,
               preconditions: dict | None = None, dry_run: bool = False) -> dict:
        rt = self.resource_type(resource)
        return copy_json(self.commit_delete(rt, namespace, name, preconditions=preconditions, dry_run=dry_run))

    # The commit_* steps run after admission; they are synchronous, so each is atomic with
    # respect to every other request on the event loop.

    def commit_create(self, rt: ResourceType, obj: dict, namespace: str | None, *, dry_run: bool = False) -> dict:
        meta = dict(obj.get("metadata") or {})
        obj = _canonical(rt, obj, meta)
        ns = self._ns(rt, namespace or meta.get("namespace"))
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            if not ns:
                raise bad_request("an empty namespace may not be set during creation")
            if ("", ns) not in self._bucket(self.resource_type("v1/namespaces")):
                raise not_found(ResourceKey("", "v1", "namespaces"), ns)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            # etcd3 store.Create: a client-supplied RV is an internal error, not a validation one.
            raise internal("resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(rt, "", [FieldError("FieldValueRequired", "metadata.name", "name or generateName is required")])
            meta["name"] = meta["generateName"] + "".join(self._random.choice(_GENERATE_ALPHABET) for _ in range(5))
        name = meta["name"]
        self._validate_meta(rt, obj, None)
        if (ns, name) in self._bucket(rt):
            raise already_exists(rt.key, name)
        self._prepare_for_create(rt, obj)
        errors = validate(obj, rt.schema)
        if errors:
            raise invalid(rt, name, errors)
        meta["uid"] = str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        meta["creationTimestamp"] = _rfc3339(self.clock())
        for drop in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(drop, None)
        if rt.crd or rt.key.plural == "customresourcedefinitions":
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._bucket(rt)[(ns, name)] = obj
        self._emit(rt, "ADDED", obj, None)
        if rt.key.plural == "customresourcedefinitions" and rt.key.group == "apiextensions.k8s.io":
            return self._crd_created(obj)
        return obj

    def commit_update(self, rt: ResourceType, obj: dict, namespace: str | None, name: str, *,
                      subresource: str | None = None, dry_run: bool = False) -> dict:
        if subresource not in (None, "status") or (subresource == "status" and not rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = self._ns(rt, namespace)
        meta = dict(obj.get("metadata") or {})
        if meta.get("name") and name and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        old = self._current(rt, ns, name)
        # Precondition first, strategy second: generic/registry/store.go Update -> GuaranteedUpdate
        # checks the RV before rest.BeforeUpdate (PrepareForUpdate, Validate) runs.
        rv = meta.get("resourceVersion") or ""
        if not rv:
            if not rt.allow_unconditional_update:
                raise invalid(rt, name, [FieldError("FieldValueInvalid", "metadata.resourceVersion",
                                                    "must be specified for an update", "0x0")])
        elif rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.key, name, MODIFIED)
        new = self._prepare_for_update(rt, obj, old, subresource)
        if old["metadata"].get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                raise forbidden_finalizers(rt, name)
        self._validate_meta(rt, new, old)
        errors = validate(new, rt.schema)
        if errors:
            raise invalid(rt, name, errors)
        if rt.crd or rt.key.plural == "customresourcedefinitions":
            if _spec_changed(rt, old, new):
                new["metadata"]["generation"] = int(old["metadata"].get("generation") or 0) + 1
        finishing = bool(new["metadata"].get("deletionTimestamp")) and not new["metadata"].get("finalizers")
        if _same(old, new) and not finishing:
            return old  # etcd3 GuaranteedUpdate: an identical object is not written, RV unchanged
        if dry_run:
            return new
        new["metadata"]["resourceVersion"] = self._next_rv()
        if finishing:
            del self._bucket(rt)[(ns, name)]
            self._emit(rt, "DELETED", new, old)
            return new
        self._bucket(rt)[(ns, name)] = new
        self._emit(rt, "MODIFIED", new, old)
        if rt.key == ResourceKey("apiextensions.k8s.io", "v1", "customresourcedefinitions") and subresource is None:
            self._register_crd(new)
        return new

    def commit_delete(self, rt: ResourceType, namespace: str | None, name: str, *,
                      preconditions: dict | None = None, dry_run: bool = False) -> dict:
        ns = self._ns(rt, namespace)
        old = self._current(rt, ns, name)
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise conflict(rt.key, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                         f"UID in object meta: {old['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(rt.key, name, f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                                         f"ResourceVersion in object meta: {old['metadata']['resourceVersion']}")
        if old["metadata"].get("finalizers"):
            # Graceful deletion with finalizers: mark, keep (store.go updateForGracefulDeletionAndFinalizers).
            if old["metadata"].get("deletionTimestamp") or dry_run:
                return old
            new = copy_json(old)
            new["metadata"]["deletionTimestamp"] = _rfc3339(self.clock())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if new["metadata"].get("generation"):
                new["metadata"]["generation"] += 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._bucket(rt)[(ns, name)] = new
            self._emit(rt, "MODIFIED", new, old)
            return new
        if dry_run:
            return old if rt.return_deleted_object else self._success(rt, old)
        gone_obj = self._remove(rt, ns, name)
        if rt.key.plural == "namespaces" and rt.key.group == "":
            self._delete_namespace_contents(name)
        if rt.key == ResourceKey("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._crd_deleted(old)
        return gone_obj if rt.return_deleted_object else self._success(rt, gone_obj)

    def _remove(self, rt: ResourceType, ns: str, name: str) -> dict:
        old = self._bucket(rt).pop((ns, name))
        gone_obj = copy_json(old)
        gone_obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(rt, "DELETED", gone_obj, old)
        return gone_obj

    @staticmethod
    def _success(rt: ResourceType, obj: dict) -> dict:
        details = {"name": obj["metadata"]["name"], "kind": rt.key.plural, "uid": obj["metadata"]["uid"]}
        if rt.key.group:
            details["group"] = rt.key.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    # -- strategies ------------------------------------------------------------------------

    def _prepare_for_create(self, rt: ResourceType, obj: dict) -> None:
        if rt.status_subresource:
            # customResourceStrategy.PrepareForCreate: "create cannot set status".
            obj.pop("status", None)
        plural = (rt.key.group, rt.key.plural)
        if plural == ("", "pods"):
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif plural == ("", "namespaces"):
            obj["status"] = {"phase": "Active"}
            # NamespaceDefaultLabelName admission: kubernetes.io/metadata.name is always set.
            obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}),
                                         "kubernetes.io/metadata.name": obj["metadata"]["name"]}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        elif plural == ("", "secrets"):
            _secret_string_data(obj)
        elif plural == ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"):
            _default_webhooks(obj)
        elif plural == ("admissionregistration.k8s.io", "validatingwebhookconfigurations"):
            _default_webhooks(obj, mutating=False)
        elif plural == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._validate_crd(obj)

    def _prepare_for_update(self, rt: ResourceType, obj: dict, old: dict, subresource: str | None) -> dict:
        if subresource == "status":
            # statusStrategy.PrepareForUpdate: copy the old object, keep only the new .status.
            new = copy_json(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            return new
        new = _canonical(rt, obj, dict(obj.get("metadata") or {}))
        if rt.status_subresource:
            # PrepareForUpdate of the main resource: status changes are ignored.
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = dict(new.get("metadata") or {})
        for keep in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            if keep in old["metadata"]:
                meta[keep] = old["metadata"][keep]
            else:
                meta.pop(keep, None)
        new["metadata"] = meta
        plural = (rt.key.group, rt.key.plural)
        if plural == ("", "secrets"):
            _secret_string_data(new)
        elif plural == ("", "namespaces"):
            meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}
        elif plural == ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"):
            _default_webhooks(new)
        elif plural == ("admissionregistration.k8s.io", "validatingwebhookconfigurations"):
            _default_webhooks(new, mutating=False)
        elif plural == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._validate_crd(new)
        return new

    def _validate_meta(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        errors: list[FieldError] = []
        pattern = _DNS1123_LABEL if rt.key.plural == "namespaces" and not rt.key.group else _DNS1123_SUBDOMAIN
        if old is None and (len(name) > 253 or not pattern.match(name)):
            errors.append(FieldError("FieldValueInvalid", "metadata.name",
                                     "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                                     "'-' or '.', and must start and end with an alphanumeric character", name))
        for kind in ("labels", "annotations"):
            value = meta.get(kind)
            if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
                errors.append(FieldError("FieldValueInvalid", f"metadata.{kind}", "must be a map of strings", value))
            elif value:
                errors.extend(_label_errors(kind, value))
        fin = meta.get("finalizers")
        if fin is not None and (not isinstance(fin, list) or not all(isinstance(f, str) for f in fin)):
            errors.append(FieldError("FieldValueInvalid", "metadata.finalizers", "must be a list of strings", fin))
        if errors:
            raise invalid(rt, name, errors)

    # -- CRDs and namespaces ---------------------------------------------------------------

    def _validate_crd(self, crd: dict) -> None:
        rt = self.resource_type("apiextensions.k8s.io/v1/customresourcedefinitions")
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        errors: list[FieldError] = []
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if crd["metadata"].get("name") != expected:
            errors.append(FieldError("FieldValueInvalid", "metadata.name", 'must be spec.names.plural+"."+spec.group',
                                     crd["metadata"].get("name")))
        versions = spec.get("versions") or []
        if sum(1 for v in versions if v.get("storage")) != 1:
            errors.append(FieldError("FieldValueInvalid", "spec.versions", "must have exactly one version marked as storage version", versions and "array"))
        if not names.get("kind"):
            errors.append(FieldError("FieldValueRequired", "spec.names.kind", ""))
        if errors:
            raise invalid(rt, crd["metadata"].get("name", ""), errors)

    def _register_crd(self, crd: dict) -> None:
        new_rt = resource_type_from_crd(crd)
        for key, rt in list(self.registry.types.items()):
            if rt.crd and rt.key.group == new_rt.key.group and rt.key.plural == new_rt.key.plural and key != new_rt.key:
                self.registry.remove(key)  # storage version changed; old objects stay under the new key
                self._objects[new_rt.key] = self._objects.pop(key, {})
        self.registry.add(new_rt)
        self._objects.setdefault(new_rt.key, {})

    def _crd_created(self, crd: dict) -> dict:
        """Register the served version and report it established, as the apiextensions
        controllers (naming, establishing) do a moment after creation."""
        self._register_crd(crd)
        spec = crd["spec"]
        status = {
            "acceptedNames": spec["names"],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
                 "lastTransitionTime": crd["metadata"]["creationTimestamp"]},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": crd["metadata"]["creationTimestamp"]},
            ],
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
        }
        rt = self.resource_type("apiextensions.k8s.io/v1/customresourcedefinitions")
        return self.commit_update(rt, {**crd, "status": status}, None, crd["metadata"]["name"], subresource="status")

    def _crd_deleted(self, crd: dict) -> None:
        rt = resource_type_from_crd(crd)
        for (ns, name) in sorted(self._bucket(rt)):
            self._remove(rt, ns, name)
        self.registry.remove(rt.key)
        self._objects.pop(rt.key, None)
        for w in [w for w in self._watchers if w.key == rt.key]:
            w.queue.put_nowait(None)  # the resource is no longer served: end its watches
            self._watchers.discard(w)

    def _delete_namespace_contents(self, namespace: str) -> None:
        # The namespace controller's job in a real cluster; done at once here (no Terminating phase).
        for key, rt in list(self.registry.types.items()):
            if rt.namespaced:
                for (ns, name) in sorted(self._bucket(rt)):
                    if ns == namespace:
                        self._remove(rt, ns, name)


# k8s.io/apimachinery/pkg/util/validation/validation.go IsQualifiedName / IsValidLabelValue.
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _qualified_name_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    out = []
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        out.append("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                   "'-' or '.', and must start and end with an alphanumeric character")
    if not name:
        out.append("name part must be non-empty")
    elif len(name) > 63:
        out.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        out.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                   "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
                   "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return out


def _label_errors(kind: str, values: dict[str, str]) -> list[FieldError]:
    """ValidateLabels / ValidateAnnotations (apimachinery/pkg/api/validation/objectmeta.go)."""
    errors = []
    for key, value in values.items():
        for detail in _qualified_name_errors(key):
            errors.append(FieldError("FieldValueInvalid", f"metadata.{kind}", detail, key))
        if kind == "labels":
            if len(value) > 63:
                errors.append(FieldError("FieldValueInvalid", "metadata.labels", "must be no more than 63 characters", value))
            elif not _LABEL_VALUE.match(value):
                errors.append(FieldError("FieldValueInvalid", "metadata.labels",
                                         "a valid label must be an empty string or consist of alphanumeric characters, "
                                         "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                                         "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                                         "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')", value))
    if kind == "annotations" and sum(len(k) + len(v) for k, v in values.items()) > 256 * 1024:
        errors.append(FieldError("FieldValueTooLong", "metadata.annotations", "must have at most 262144 bytes", "object"))
    return errors


def _canonical(rt: ResourceType, obj: dict, meta: dict) -> dict:
    """apiVersion, kind, metadata first (the order Go's encoder writes), then the rest."""
    out = {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": meta}
    for key, value in obj.items():
        if key not in out:
            out[key] = value
    return out


def _spec_changed(rt: ResourceType, old: dict, new: dict) -> bool:
    # customResourceStrategy.PrepareForUpdate: generation bumps when anything but metadata (and
    # status, when it is a subresource) changed.
    skip = {"metadata", "status"} if rt.status_subresource else {"metadata"}
    return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}


def _same(old: dict, new: dict) -> bool:
    return msgspec.json.encode(old) == msgspec.json.encode(new) or old == new


def _secret_string_data(obj: dict) -> None:
    # core/v1 Secret conversion: stringData is write-only and merged into data.
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = dict(obj.get("data") or {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(v.encode()).decode()
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _default_webhooks(obj: dict, *, mutating: bool = True) -> None:
    # admissionregistration/v1 defaults (pkg/apis/admissionregistration/v1/defaults.go).
    hooks = []
    for hook in obj.get("webhooks") or []:
        hook = {**hook}
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", 10)
        if mutating:
            hook.setdefault("reinvocationPolicy", "Never")
        svc = (hook.get("clientConfig") or {}).get("service")
        if isinstance(svc, dict):
            hook["clientConfig"] = {**hook["clientConfig"], "service": {**svc, "port": svc.get("port", 443)}}
        rules = []
        for rule in hook.get("rules") or []:
            rules.append({**rule, "scope": rule.get("scope", "*")})
        hook["rules"] = rules
        hooks.append(hook)
    if "webhooks" in obj:
        obj["webhooks"] = hooks


# --- patches ---------------------------------------------------------------------------------

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def accepted_patch_types(rt: ResourceType) -> list[str]:
    """What PATCH accepts for this resource; CRs have no strategic merge patch (no Go types)
    and server-side apply is not emulated."""
    return [JSON_PATCH, MERGE_PATCH] if rt.crd else [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH]


def apply_patch(rt: ResourceType, current: dict, patch: Any, patch_type: str) -> dict:
    patch_type = patch_type.split(";")[0].strip()
    if patch_type not in accepted_patch_types(rt):
        raise unsupported_media_type(patch_type, accepted_patch_types(rt) + [APPLY_PATCH])
    try:
        if patch_type == JSON_PATCH:
            result = apply_json_patch(current, patch)
        elif patch_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise PatchError("json: cannot unmarshal array into Go value of type map[string]interface {}", decode=True)
            result = apply_merge_patch(current, patch)
        else:
            result = apply_strategic_merge_patch(current, patch)
    except PatchError as e:
        if e.decode:
            raise bad_request(str(e)) from None
        # handlers/patch.go: NewGenericServerResponse(422, ..., isUnexpectedResponse=false) drops
        # the JSON-patch library's error, so clients see only this generic message (kubectl:
        # "The request is invalid: the server rejected our request due to an error in our request").
        log.debug("patch rejected: %s", e)
        raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {}) from None
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result
