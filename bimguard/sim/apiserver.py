"""The Kubernetes API server of the cluster emulator: real REST over real HTTP.

Serves what kubernetes_asyncio, client-go-like code and the real kubectl need:
discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, `/version`), OpenAPI v3
(`/openapi/v3`; `/openapi/v2` is 404 as on servers that dropped it), and for every resource in
the registry get / list (labelSelector, fieldSelector, limit/continue) / watch (from a
resourceVersion, bookmarks, 410 as an ERROR event) / create / update / patch (JSON patch, merge
patch, strategic merge patch for built-ins only) / delete / deletecollection, with the `status`
subresource where the resource has one.

Resources: built-ins (see resources.py) plus every CRD object in the store; the Longhorn CRDs of the
emulated release line (nodes, replicas, backingimages, backingimagemanagers,
backingimagedatasources, settings, orphans, volumes, engines, volumeattachments; v1.7.2, v1.8.1 or
v1.9.1, `longhorn_version=`) are installed at start-up and more can be created at runtime.

Public API:
    ApiServer(namespace_seed=("default", "longhorn-system"), webhook_hosts=None, longhorn_version="v1.7.2")
    await server.start(host="127.0.0.1", port=0) -> "http://127.0.0.1:PORT"; server.url
    await server.stop()
    server.kubeconfig(path)        # context "sim", a dummy bearer token
    server.store                   # Store (store.py): in-process get/list/create/update/patch/delete
    server.faults                  # Faults (faults.py)
    server.webhook_hosts           # "svc.ns.svc" -> (host, port), read at every webhook call
    server.add_user(token, username, groups, uid=, extra=)  # who a bearer token is (AdmissionReview.userInfo)
    server.deny(verb, resource, group=, namespace=, subresource=, user=)  # 403 from now on (authz.py)
    server.allow(denial=None)      # drop one denial, or all; server.authorizer holds the list
    server.podsecurity             # PodSecurity admission (podsecurity.py): .defaults, .exemptions, .enabled
    server.policies                # ValidatingAdmissionPolicy admission (policy.py): .enabled, .decisions
`ResourceKey` is a frozen dataclass (group, version, plural); strings "v1/pods" and
"longhorn.io/v1beta2/nodes" are accepted everywhere a key is.

Every request is first authorized (authz.py, as filters/authorization.go does before any handler):
allowed unless a test denied it with `deny(...)`, then 403 in kube-apiserver's words
(`pods is forbidden: User "..." cannot create resource "pods" in API group "" in the namespace "x"`);
`authorization.k8s.io/v1` self/subject/local access reviews answer from the same list (`kubectl auth can-i`);
`authentication.k8s.io/v1` TokenReviews know the tokens `add_user` registered.
The write path runs in kube-apiserver's order (handlers/create.go, update.go, patch.go ->
registry/store.go): decode + prune unknown fields (Warning headers, or 400 under
`fieldValidation=Strict`) + schema defaults -> mutating admission (oldObject = the stored object) -> prune the
webhook output -> resourceVersion precondition (409) -> status strategy -> validation (422) ->
validating admission (PodSecurity, podsecurity.py, then ValidatingAdmissionPolicies, policy.py, then
the validating webhooks: the plugin order of pkg/kubeapiserver/options/plugins.go) -> store. Authentication accepts any bearer token (`add_user` says who a
token is; kubectl's `--as` impersonation headers are honoured).

The store lives on the server's event loop: in-process callers must use it from that loop.

Not emulated (known differences from kube-apiserver):
- server-side apply (`application/apply-patch+yaml` is 415); strategic merge patch for built-ins
  is a merge patch without SMP's list merge keys; no managedFields;
- list `resourceVersion`/`resourceVersionMatch` are ignored: lists are always served from the
  latest state (continue tokens do page a consistent snapshot);
- no garbage collection (ownerReferences), no graceful pod deletion (pods go at once unless they
  have finalizers), namespace deletion removes its contents at once (no Terminating phase);
- only the storage version of a CRD is served, no conversion webhooks, no CEL validation rules;
- ServiceAccounts, Deployments, Jobs, PodDisruptionBudgets and RBAC kinds are stored and served,
  but nothing acts on them: RBAC objects grant nothing and deny nothing (authorization is the
  `deny` list; no `selfsubjectrulesreviews`, no authorization of impersonation itself), and
  PodSecurity only warns about Deployments and Jobs (no controller creates their pods);
- protobuf request bodies only for Namespace, Secret and ConfigMap (what kubectl's `create
  namespace|secret|configmap` send) and the access reviews (`kubectl auth can-i`); responses are
  always JSON.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import re
import time
from collections import deque
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Callable

import msgspec
import yaml
from aiohttp import web

from bimguard.sim import authz, openapi
from bimguard.sim.admission import DEFAULT_USER, Attributes, Dispatcher
from bimguard.sim.clock import SimClock
from bimguard.sim.faults import Faults
from bimguard.sim.podsecurity import PodSecurity
from bimguard.sim.policy import AdmissionPolicies
from bimguard.sim.resources import ResourceKey, ResourceType, longhorn_crds
from bimguard.sim.store import (
    ApiError,
    ListPage,
    Store,
    accepted_patch_types,
    apply_patch,
    bad_request,
    unsupported_media_type,
    APPLY_PATCH,
    copy_json,
)

__all__ = ["ApiServer", "ApiError", "ResourceKey", "Store"]

log = logging.getLogger(__name__)

CRD_KEY = ResourceKey("apiextensions.k8s.io", "v1", "customresourcedefinitions")
DEFAULT_WATCH_TIMEOUT = 1800.0  # kube-apiserver --min-request-timeout


class _Request:
    """A parsed resource URL."""

    def __init__(self, rt: ResourceType, namespace: str | None, name: str | None, subresource: str | None) -> None:
        self.rt = rt
        self.namespace = namespace
        self.name = name
        self.subresource = subresource


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status,
                        content_type="application/json", headers=headers)


def _error(err: ApiError) -> web.Response:
    return _json(err.body, err.status, err.headers)


def _warning_header(text: str) -> str:
    # RFC 7234 warn-text as k8s.io/apiserver/pkg/endpoints/filters/warning.go writes it.
    return '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_BODY_TYPES = ("application/json", "application/yaml")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class ApiServer:
    def __init__(self, *, namespace_seed: tuple[str, ...] = ("default", "longhorn-system"),
                 webhook_hosts: dict[str, tuple[str, int]] | None = None, longhorn_version: str = "v1.7.2",
                 clock: SimClock | None = None) -> None:
        # The server's own wall clock: creationTimestamp, deletionTimestamp and every response's
        # `Date` header come from it. `clock.skew` puts it ahead of (or behind) the processes
        # around it, as an unsynchronised node's clock would be.
        self.clock = clock or SimClock()
        self.store = Store(clock=self.clock.wall)
        self.faults = Faults(self.store)
        self.admission = Dispatcher(self.store, dict(webhook_hosts or {}))
        self.authorizer = authz.Authorizer()  # the deny list (authz.py)
        self.podsecurity = PodSecurity(self.store)  # the PodSecurity admission plugin (podsecurity.py)
        self.policies = AdmissionPolicies(self.store)  # ValidatingAdmissionPolicy (policy.py)
        self.url = ""
        self.bookmark_interval = 5.0  # seconds between BOOKMARK events on idle watches
        self.users: dict[str, dict] = {}
        self.unknown_paths: deque[str] = deque(maxlen=200)  # requests no route served (debugging aid)
        self.requests: deque[tuple[str, str, int]] = deque(maxlen=2000)  # (method, path_qs, status)
        # Called with (method, path_qs, status, username) after every request (fault and kill tests).
        self.request_listeners: list[Callable[[str, str, int, str], None]] = []
        self._runner: web.AppRunner | None = None
        for ns in namespace_seed:
            self.store.create("v1/namespaces", {"metadata": {"name": ns}})
        for crd in longhorn_crds(longhorn_version):
            self.store.create(CRD_KEY, crd)

    @property
    def webhook_hosts(self) -> dict[str, tuple[str, int]]:
        """"service.namespace.svc" (or "host:port") -> local (host, port); read at every webhook
        call, so entries can be added, changed or removed at runtime."""
        return self.admission.hosts

    @webhook_hosts.setter
    def webhook_hosts(self, hosts: dict[str, tuple[str, int]]) -> None:
        self.admission.hosts = hosts

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._date_header)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        bound = sockets[0].getsockname()
        self.url = f"http://{host}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        self.store.drop_watches()
        await self.admission.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kubeconfig(self, path: str | os.PathLike, token: str = "sim-token") -> None:
        """A kubeconfig for this server (context "sim"); `token` says who it is (`add_user`)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sim", "cluster": {"server": self.url}}],
            "users": [{"name": "sim", "user": {"token": token}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim", "namespace": "default"}}],
            "current-context": "sim",
            "preferences": {},
        }
        with open(path, "w") as f:
            yaml.safe_dump(config, f)

    def add_user(self, token: str, username: str, groups: list[str] | None = None, *,
                 uid: str | None = None, extra: dict[str, list[str]] | None = None) -> None:
        """Make `token` authenticate as `username` (AdmissionReview.userInfo). A service account
        name (`system:serviceaccount:<ns>:<name>`) gets the groups the token authenticator adds."""
        groups = list(groups or [])
        if username.startswith("system:serviceaccount:") and not groups:
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{username.split(':')[2]}"]
        info: dict[str, Any] = {"username": username, "groups": groups + ["system:authenticated"]}
        if uid:
            info["uid"] = uid
        if extra:
            info["extra"] = extra
        self.users[token] = info

    def deny(self, verb: str, resource: str, *, group: str = "", namespace: str | None = None,
             subresource: str = "", user: str | None = None, reason: str = "") -> authz.Denial:
        """Refuse requests from now on (403, kube-apiserver's wording; see authz.py): `verb` one of
        get/list/watch/create/update/patch/delete/deletecollection or "*"; `resource` the plural
        ("nodes/status" names a subresource too); `group` the API group ("" core, "*" any);
        `namespace` None for everywhere; `user` None for every user (members of system:masters are
        never denied). Returns the entry; `allow(entry)` drops it, `allow()` drops all."""
        return self.authorizer.deny(verb, resource, group=group, namespace=namespace, subresource=subresource,
                                    user=user, reason=reason)

    def allow(self, denial: authz.Denial | None = None) -> None:
        self.authorizer.allow(denial)

    def _user(self, request: web.Request) -> dict:
        impersonate = request.headers.get("Impersonate-User")
        if impersonate:
            return {"username": impersonate, "groups": request.headers.getall("Impersonate-Group", []) + ["system:authenticated"]}
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        return dict(self.users.get(token) or DEFAULT_USER)

    # -- HTTP plumbing -----------------------------------------------------------------------

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response carries the server's time (Go's net/http adds `Date` to each response,
        net/http/server.go `chunkWriter.writeHeader`), from this server's clock; watch streams
        included, since the hook runs before any response's headers are sent."""
        response.headers["Date"] = format_datetime(self.clock.wall(), usegmt=True)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except ApiError as e:
            status = e.status
            return _error(e)
        except web.HTTPException:
            raise
        except Exception as e:  # a bug here must look like a server error, not kill the client
            log.exception("emulated apiserver: unhandled error for %s %s", request.method, request.path_qs)
            status = 500
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {e!r}"))
        finally:
            self.requests.append((request.method, request.path_qs, status))
            if self.request_listeners:
                user = self._user(request)["username"]
                for fn in list(self.request_listeners):
                    fn(request.method, request.path_qs, status, user)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        # filters/authorization.go: every request is authorized before any handler sees it.
        self.authorizer.check(authz.request_attributes(request.method, request.path, request.query, self._user(request)))
        review = authz.review_path(parts)
        if review is not None:
            return await self._access_review(request, *review)
        if parts == ["apis", "authentication.k8s.io", "v1", "tokenreviews"]:
            if request.method != "POST":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return _json(authz.token_review(await self._body(request), self.users), 201)
        if request.method == "GET":
            static = self._static(parts)
            if static is not None:
                return static
        if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] == "v1":
            return await self._resource(request, "", "v1", parts[2:])
        if parts[:1] == ["apis"] and len(parts) >= 4:
            return await self._resource(request, parts[1], parts[2], parts[3:])
        self.unknown_paths.append(f"{request.method} {request.path_qs}")
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _static(self, parts: list[str]) -> web.Response | None:
        gvs = self.store.registry.group_versions()
        if parts == ["version"]:
            major, minor = openapi.SERVER_VERSION.lstrip("v").split(".")[:2]
            return _json({"major": major, "minor": minor, "gitVersion": openapi.SERVER_VERSION, "gitCommit": "bimguard-sim",
                          "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.4",
                          "compiler": "gc", "platform": "linux/amd64"})
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if parts == ["api"]:
            return _json({"kind": "APIVersions", "versions": ["v1"],
                          "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//")[-1]}]})
        if parts == ["api", "v1"]:
            return _json(self._resource_list("v1", gvs.get("v1", [])))
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {authz.GROUP: [authz.VERSION]}
            for gv in gvs:
                if "/" in gv:
                    group, version = gv.split("/")
                    groups.setdefault(group, []).append(version)
            return _json({"kind": "APIGroupList", "apiVersion": "v1",
                          "groups": [self._group(g, vs) for g, vs in sorted(groups.items())]})
        if parts == ["apis", authz.GROUP, authz.VERSION]:
            return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": authz.GROUP_VERSION,
                          "resources": authz.discovery_resources()})
        if parts == ["apis", authz.GROUP]:
            return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group(authz.GROUP, [authz.VERSION])})
        if len(parts) == 2 and parts[0] == "apis":
            versions = [gv.split("/")[1] for gv in gvs if gv.startswith(parts[1] + "/")]
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], versions)})
        if len(parts) == 3 and parts[0] == "apis":
            gv = f"{parts[1]}/{parts[2]}"
            if gv not in gvs:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(self._resource_list(gv, gvs[gv]))
        if parts[:2] == ["openapi", "v3"]:
            if len(parts) == 2:
                return _json(openapi.index(self.store.registry))
            gv = "/".join(parts[3:]) if parts[2] in ("api", "apis") else ""
            doc = openapi.document(self.store.registry, gv)
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(doc)
        if parts[:2] == ["openapi", "v2"]:
            self.unknown_paths.append("GET /" + "/".join(parts))
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return None

    @staticmethod
    def _group(group: str, versions: list[str]) -> dict:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    @staticmethod
    def _resource_list(gv: str, types: list[ResourceType]) -> dict:
        resources = []
        for rt in types:
            entry: dict[str, Any] = {"name": rt.key.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                                     "kind": rt.kind, "verbs": rt.verbs, "storageVersionHash": ""}
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            if rt.status_subresource:
                resources.append({"name": f"{rt.key.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # -- access reviews (authz.py) ------------------------------------------------------------

    async def _access_review(self, request: web.Request, plural: str, namespace: str | None) -> web.Response:
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self._options(request)
        body = await self._body(request)
        return _json(authz.review(self.authorizer, plural, namespace, body, self._user(request)), 201)

    # -- resource requests -------------------------------------------------------------------

    def _parse(self, group: str, version: str, rest: list[str]) -> _Request:
        def lookup(plural: str) -> ResourceType | None:
            return self.store.registry.get(ResourceKey(group, version, plural))

        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and group == "" and lookup(rest[2]) is None:
            pass  # /api/v1/namespaces/<name>/<subresource>: the Namespace object itself
        elif rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rt = lookup(rest[0])
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _Request(rt, namespace, name, sub)

    async def _resource(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        req = self._parse(group, version, rest)
        q = request.query
        method = request.method
        if method == "GET":
            verb = "get" if req.name else ("watch" if _truthy(q.get("watch")) else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if req.name else "deletecollection"}.get(method, "")
        if not verb or (verb == "create" and req.name):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        delay = self.faults.delay_for(verb, req.rt.key)
        if delay:
            await asyncio.sleep(delay)
        fault = self.faults.error_for(verb, req.rt.key, req.subresource)
        if fault is not None:
            raise fault
        handler = getattr(self, f"_do_{verb}")
        return await handler(request, req)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            raise bad_request("the body of the request was empty")
        ctype = request.content_type or "application/json"
        if ctype == PROTOBUF and request.method in ("POST", "PUT"):
            return decode_protobuf(raw)
        if ctype not in _BODY_TYPES and request.method != "PATCH":
            raise unsupported_media_type(ctype, list(_BODY_TYPES) + [PROTOBUF])
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"the body of the request could not be decoded: {e}") from None

    @staticmethod
    def _options(request: web.Request) -> tuple[bool, str]:
        dry = "All" in request.query.getall("dryRun", [])
        fv = request.query.get("fieldValidation", "Warn")
        if fv not in ("Ignore", "Warn", "Strict"):
            raise bad_request(f'fieldValidation: Unsupported value: "{fv}": supported values: "Ignore", "Strict", "Warn"')
        return dry, fv

    def _respond(self, body: Any, status: int, warnings: list[str], fv: str = "Warn") -> web.Response:
        resp = _json(body, status)
        for w in warnings:
            resp.headers.add("Warning", _warning_header(w))
        return resp

    # reads

    async def _do_get(self, request: web.Request, req: _Request) -> web.Response:
        assert req.name is not None
        obj = self.store._current(req.rt, req.namespace, req.name)
        return self._maybe_table(request, req.rt, [obj], None) or _json(obj)

    async def _do_list(self, request: web.Request, req: _Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise bad_request(f"limit: Invalid value: {q.get('limit')!r}") from None
        page = self.store.list_page(req.rt.key, req.namespace, q.get("labelSelector"), field_selector=q.get("fieldSelector"),
                                    limit=limit, continue_token=q.get("continue", ""))
        table = self._maybe_table(request, req.rt, page.items, page)
        if table is not None:
            return table
        meta: dict[str, Any] = {"resourceVersion": page.resource_version}
        if page.continue_token:
            meta["continue"] = page.continue_token
            meta["remainingItemCount"] = page.remaining
        return _json({"kind": req.rt.list_kind, "apiVersion": req.rt.api_version, "metadata": meta, "items": page.items})

    def _maybe_table(self, request: web.Request, rt: ResourceType, items: list[dict], page: ListPage | None) -> web.Response | None:
        """meta.k8s.io/v1 Table for `kubectl get` (it asks with `Accept: ...;as=Table`)."""
        accept = request.headers.get("Accept", "")
        if "g=meta.k8s.io" in accept and "as=PartialObjectMetadata" in accept and "as=Table" not in accept:
            # Metadata-only clients (client-go metadata informers) ask for PartialObjectMetadata[List].
            partial = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]} for o in items]
            if page is None:
                return _json(partial[0])
            meta: dict[str, Any] = {"resourceVersion": page.resource_version}
            if page.continue_token:
                meta["continue"] = page.continue_token
            return _json({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": partial})
        if "as=Table" not in accept or "g=meta.k8s.io" not in accept:
            return None
        body = _table(rt, items, page.resource_version if page else self.store.resource_version,
                      page.continue_token if page else "", request.query.get("includeObject") == "Object",
                      self.store.clock())
        return _json(body)

    async def _do_watch(self, request: web.Request, req: _Request) -> web.StreamResponse:
        q = request.query
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        send_initial = q.get("sendInitialEvents")
        try:
            timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise bad_request("timeoutSeconds: must be a number") from None
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        try:
            watcher = self.store.watch(req.rt.key, req.namespace, q.get("labelSelector"), field_selector=q.get("fieldSelector"),
                                       resource_version=q.get("resourceVersion"),
                                       send_initial_events=None if send_initial is None else _truthy(send_initial))
        except ApiError as e:
            if e.status != 410:
                raise
            # The real server answers 200 and sends the 410 as an ERROR event on the stream.
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": e.body}).encode() + b"\n")
            return resp
        await resp.prepare(request)
        rt = req.rt
        initial_pending = _truthy(send_initial)
        accept = request.headers.get("Accept", "")
        as_table = "as=Table" in accept and "g=meta.k8s.io" in accept
        include_object = q.get("includeObject") == "Object"
        first_table = True
        deadline = time.monotonic() + timeout
        last_bookmark = time.monotonic()

        async def write(event: dict) -> None:
            await resp.write(msgspec.json.encode(event) + b"\n")

        def bookmark(extra: dict | None = None) -> dict:
            meta: dict[str, Any] = {"resourceVersion": str(self.store.resource_version), "creationTimestamp": None}
            if extra:
                meta["annotations"] = extra
            return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

        try:
            while True:
                if initial_pending and watcher.queue.empty():
                    initial_pending = False
                    if bookmarks:
                        await write(bookmark({"k8s.io/initial-events-end": "true"}))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if bookmarks:
                        await write(bookmark())
                    break
                wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except asyncio.TimeoutError:
                    if bookmarks and watcher.queue.empty() and time.monotonic() - last_bookmark >= self.bookmark_interval:
                        await write(bookmark())
                        last_bookmark = time.monotonic()
                    continue
                if item is None:
                    break  # dropped (fault injection or shutdown)
                type_, obj = item
                if as_table:
                    # Watch events in Table form, as `kubectl get -w` asks for; the column
                    # definitions come with the first event only (handlers/watch.go).
                    obj = _table(rt, [obj], obj["metadata"].get("resourceVersion", ""), "", include_object,
                                 self.store.clock())
                    if not first_table:
                        obj["columnDefinitions"] = []
                    first_table = False
                await write({"type": type_, "object": obj})
        except ConnectionResetError:
            pass  # the client went away; CancelledError (server shutdown) propagates
        finally:
            self.store.stop_watch(watcher)
        return resp

    # writes

    def _attrs(self, request: web.Request, req: _Request, operation: str, obj: dict | None, old: dict | None,
               name: str, dry: bool) -> Attributes:
        return Attributes(req.rt, operation, req.namespace or "", name, obj, old, req.subresource or "", dry, self._user(request))

    async def _validate(self, request: web.Request, req: _Request, operation: str, obj: dict | None,
                        old: dict | None, name: str, dry: bool, prepare: Any) -> list[str]:
        """Validating admission: called with the object as the storage layer would write it
        (`prepare` runs the strategy and validation without writing), and the stored oldObject.
        The validating plugins run in kube-apiserver's order (pkg/kubeapiserver/options/plugins.go
        AllOrderedPlugins): PodSecurity (podsecurity.py), ValidatingAdmissionPolicy (policy.py), then
        ValidatingAdmissionWebhook."""
        attrs = self._attrs(request, req, operation, obj, old, name, dry)
        pod_security = self.podsecurity.handles(attrs)
        policies = self.policies.handles(attrs)
        webhooks = self.admission.validates(attrs)
        if not pod_security and not policies and not webhooks:
            return []
        final = prepare() if prepare is not None else None
        attrs = dataclasses.replace(attrs, obj=final)
        warnings = self.podsecurity.validate(attrs) if pod_security else []
        if policies:
            warnings += self.policies.validate(attrs)
        if webhooks:
            warnings += await self.admission.validate(attrs)
        return warnings

    async def _do_create(self, request: web.Request, req: _Request) -> web.Response:
        dry, fv = self._options(request)
        body = await self._body(request)
        self.store.check_type_meta(req.rt, body)
        obj, warnings = self.store.decode(req.rt, body, strict=fv == "Strict")
        meta = obj.setdefault("metadata", {})
        if req.rt.namespaced:
            if meta.get("namespace") and req.namespace and meta["namespace"] != req.namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = req.namespace or meta.get("namespace")
        admitted, hook_warnings = await self.admission.admit(self._attrs(request, req, "CREATE", obj, None, meta.get("name", ""), dry))
        assert admitted is not None
        admitted, _ = self.store.decode(req.rt, admitted)  # webhook output is pruned too
        hook_warnings += await self._validate(request, req, "CREATE", admitted, None, meta.get("name", ""), dry,
                                              lambda: self.store.commit_create(req.rt, copy_json(admitted), req.namespace,
                                                                               dry_run=True))
        created = self.store.commit_create(req.rt, admitted, req.namespace, dry_run=dry)
        return self._respond(created, 201, warnings + hook_warnings if fv != "Ignore" else hook_warnings)

    async def _do_update(self, request: web.Request, req: _Request) -> web.Response:
        assert req.name is not None
        dry, fv = self._options(request)
        body = await self._body(request)
        self.store.check_type_meta(req.rt, body)
        obj, warnings = self.store.decode(req.rt, body, strict=fv == "Strict")
        meta = obj.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != req.name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({req.name})")
        meta.setdefault("name", req.name)
        if req.rt.namespaced:
            meta.setdefault("namespace", req.namespace)
        old = self.store._current(req.rt, req.namespace, req.name)
        # oldObject is what is stored now, even when the request's resourceVersion is stale
        # (the RV precondition is checked later, inside GuaranteedUpdate).
        admitted, hook_warnings = await self.admission.admit(self._attrs(request, req, "UPDATE", obj, old, req.name, dry))
        assert admitted is not None
        admitted, _ = self.store.decode(req.rt, admitted)
        hook_warnings += await self._validate(
            request, req, "UPDATE", admitted, old, req.name, dry,
            lambda: self.store.commit_update(req.rt, copy_json(admitted), req.namespace, req.name,
                                             subresource=req.subresource, dry_run=True))
        updated = self.store.commit_update(req.rt, admitted, req.namespace, req.name, subresource=req.subresource, dry_run=dry)
        return self._respond(updated, 200, warnings + hook_warnings if fv != "Ignore" else hook_warnings)

    async def _do_patch(self, request: web.Request, req: _Request) -> web.Response:
        assert req.name is not None
        dry, fv = self._options(request)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == APPLY_PATCH or ctype not in accepted_patch_types(req.rt):
            raise unsupported_media_type(ctype, accepted_patch_types(req.rt) + [APPLY_PATCH])
        patch = await self._body(request)
        # handlers/patch.go retries the whole patch (admission included) on a storage conflict,
        # unless the patch itself pinned metadata.resourceVersion.
        for _ in range(10):
            current = self.store._current(req.rt, req.namespace, req.name)
            patched = apply_patch(req.rt, current, patch, ctype)
            obj, warnings = self.store.decode(req.rt, patched, strict=fv == "Strict")
            meta = obj.setdefault("metadata", {})
            pinned = bool(meta.get("resourceVersion")) and meta["resourceVersion"] != current["metadata"]["resourceVersion"]
            meta["resourceVersion"] = meta.get("resourceVersion") or current["metadata"]["resourceVersion"]
            admitted, hook_warnings = await self.admission.admit(self._attrs(request, req, "UPDATE", obj, current, req.name, dry))
            assert admitted is not None
            admitted, _ = self.store.decode(req.rt, admitted)
            try:
                hook_warnings += await self._validate(
                    request, req, "UPDATE", admitted, current, req.name, dry,
                    lambda: self.store.commit_update(req.rt, copy_json(admitted), req.namespace, req.name,
                                                     subresource=req.subresource, dry_run=True))
                updated = self.store.commit_update(req.rt, admitted, req.namespace, req.name,
                                                   subresource=req.subresource, dry_run=dry)
            except ApiError as e:
                if e.reason == "Conflict" and not pinned and "has been modified" in e.message:
                    continue
                raise
            return self._respond(updated, 200, warnings + hook_warnings if fv != "Ignore" else hook_warnings)
        raise ApiError(409, "Conflict", "the patch could not be applied after 10 attempts because of conflicting writes")

    async def _do_delete(self, request: web.Request, req: _Request) -> web.Response:
        assert req.name is not None
        options: dict = {}
        raw = await request.read()
        if raw:
            try:
                options = json.loads(raw) or {}
            except ValueError:
                raise bad_request("the body of the request could not be decoded") from None
        dry = "All" in request.query.getall("dryRun", []) or "All" in (options.get("dryRun") or [])
        old = self.store._current(req.rt, req.namespace, req.name)
        _, hook_warnings = await self.admission.admit(self._attrs(request, req, "DELETE", None, old, req.name, dry))
        hook_warnings += await self._validate(request, req, "DELETE", None, old, req.name, dry, None)
        result = self.store.commit_delete(req.rt, req.namespace, req.name, preconditions=options.get("preconditions"), dry_run=dry)
        return self._respond(result, 200, hook_warnings)

    async def _do_deletecollection(self, request: web.Request, req: _Request) -> web.Response:
        q = request.query
        page = self.store.list_page(req.rt.key, req.namespace, q.get("labelSelector"), field_selector=q.get("fieldSelector"))
        dry = "All" in q.getall("dryRun", [])
        deleted = []
        for obj in page.items:
            meta = obj["metadata"]
            sub = _Request(req.rt, meta.get("namespace"), meta["name"], None)
            await self.admission.admit(self._attrs(request, sub, "DELETE", None, obj, meta["name"], dry))
            await self._validate(request, sub, "DELETE", None, obj, meta["name"], dry, None)
            self.store.commit_delete(req.rt, meta.get("namespace"), meta["name"], dry_run=dry)
            deleted.append(obj)
        return _json({"kind": req.rt.list_kind, "apiVersion": req.rt.api_version,
                      "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": deleted})



# --- meta.k8s.io/v1 Table (what `kubectl get` prints) ----------------------------------------

_JSONPATH_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\['([^']*)'\]|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """The subset of kubectl JSONPath that CRD additionalPrinterColumns use:
    `.a.b`, `.a['b']`, `.a[0]`, `.a[?(@.type=='Ready')].status`."""
    nodes = [obj]
    pos = 0
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while pos < len(path):
        m = _JSONPATH_TOKEN.match(path, pos)
        if not m:
            return []
        pos = m.end()
        name, quoted, index, fkey, fval = m.groups()
        out = []
        for node in nodes:
            if name is not None or quoted is not None:
                key = name if name is not None else quoted
                if isinstance(node, dict) and key in node:
                    out.append(node[key])
            elif index is not None:
                if isinstance(node, list) and int(index) < len(node):
                    out.append(node[int(index)])
            elif isinstance(node, list):
                for item in node:
                    value: Any = item
                    for part in fkey.split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    if value is not None and str(value) == fval:
                        out.append(item)
        nodes = out
    return nodes


def _age(timestamp: str | None, now: datetime) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration (abridged)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<invalid>"
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


# Columns kube-apiserver's printers (pkg/printers/internalversion/printers.go) show for built-ins,
# abridged to what the emulator can compute: (name, type, jsonPath).
_BUILTIN_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "namespaces": [("Status", "string", ".status.phase")],
    "pods": [("Status", "string", ".status.phase"), ("Node", "string", ".spec.nodeName")],
    "secrets": [("Type", "string", ".type")],
    "services": [("Type", "string", ".spec.type"), ("Cluster-IP", "string", ".spec.clusterIP")],
    "events": [("Reason", "string", ".reason"), ("Object", "string", ".involvedObject.name"), ("Message", "string", ".message")],
    "leases": [("Holder", "string", ".spec.holderIdentity")],
    "customresourcedefinitions": [("Created At", "string", ".metadata.creationTimestamp")],
}


def _table(rt: ResourceType, items: list[dict], resource_version: Any, continue_token: str, include_object: bool,
           now: datetime) -> dict:
    if rt.crd:
        extra = [(c["name"], c.get("type", "string"), c["jsonPath"]) for c in rt.printer_columns
                 if c["jsonPath"] != ".metadata.creationTimestamp"]
        with_age = True
    else:
        extra = _BUILTIN_COLUMNS.get(rt.key.plural, [])
        with_age = rt.key.plural != "customresourcedefinitions"
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}]
    columns += [{"name": n, "type": "string" if t == "date" else t, "format": "", "description": "", "priority": 0} for n, t, _ in extra]
    if with_age:
        columns.append({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp", "priority": 0})
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for _, type_, path in extra:
            values = jsonpath_values(obj, path)
            if not values:
                cells.append(None)
            elif type_ == "date":
                cells.append(_age(values[0] if isinstance(values[0], str) else None, now))
            else:
                cells.append(values[0] if len(values) == 1 else ",".join(str(v) for v in values))
        if with_age:
            cells.append(_age(obj["metadata"].get("creationTimestamp"), now))
        row_obj = obj if include_object else {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": row_obj})
    meta: dict[str, Any] = {"resourceVersion": str(resource_version)}
    if continue_token:
        meta["continue"] = continue_token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows}


# --- protobuf request bodies -----------------------------------------------------------------
# kubectl's typed generators (`kubectl create namespace|secret|configmap`) POST protobuf and do
# not fall back to JSON. The emulator decodes just those kinds (field numbers from
# k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1 generated.proto); anything else
# is a 415.

PROTOBUF = "application/vnd.kubernetes.protobuf"
_PB_MAGIC = b"k8s\x00"


def _pb_fields(data: bytes) -> list[tuple[int, Any]]:
    """Wire-level decode: (field number, int | bytes) in order."""
    out: list[tuple[int, Any]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 2:
            length = varint()
            out.append((number, data[i:i + length]))
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise bad_request("the body of the request could not be decoded: bad protobuf wire type")
    return out


def _pb_map(entries: list[bytes], binary: bool = False) -> dict[str, str]:
    out = {}
    for entry in entries:
        fields = dict(_pb_fields(entry))
        value = fields.get(2, b"")
        out[fields.get(1, b"").decode()] = base64.b64encode(value).decode() if binary else value.decode()
    return out


def _pb_object_meta(data: bytes) -> dict:
    meta: dict[str, Any] = {}
    labels: list[bytes] = []
    annotations: list[bytes] = []
    finalizers: list[str] = []
    for number, value in _pb_fields(data):
        if number in (1, 2, 3, 6) and value:
            meta[{1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"}[number]] = value.decode()
        elif number == 11:
            labels.append(value)
        elif number == 12:
            annotations.append(value)
        elif number == 14:
            finalizers.append(value.decode())
    if labels:
        meta["labels"] = _pb_map(labels)
    if annotations:
        meta["annotations"] = _pb_map(annotations)
    if finalizers:
        meta["finalizers"] = finalizers
    return meta


def decode_protobuf(raw: bytes) -> dict:
    if not raw.startswith(_PB_MAGIC):
        raise bad_request("the body of the request could not be decoded: missing protobuf envelope")
    envelope = dict(_pb_fields(raw[len(_PB_MAGIC):]))
    type_meta = dict(_pb_fields(envelope.get(1, b"")))
    api_version, kind = type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode()
    if api_version == authz.GROUP_VERSION and kind in {k for k, _ in authz.REVIEWS.values()}:
        # `kubectl auth can-i` sends its SelfSubjectAccessReview as protobuf.
        review: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
        for number, value in _pb_fields(envelope.get(2, b"")):
            if number == 1:
                review["metadata"] = _pb_object_meta(value)
            elif number == 2:
                review["spec"] = authz.spec_from_protobuf(kind, value, _pb_fields)
        return review
    if api_version != "v1" or kind not in ("Namespace", "Secret", "ConfigMap"):
        raise unsupported_media_type(PROTOBUF + f" ({api_version}, Kind={kind})", list(_BODY_TYPES))
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    maps: dict[int, list[bytes]] = {}
    for number, value in _pb_fields(envelope.get(2, b"")):
        if number == 1:
            obj["metadata"] = _pb_object_meta(value)
        elif kind == "Namespace" and number == 2:
            obj["spec"] = {"finalizers": [v.decode() for n, v in _pb_fields(value) if n == 1]}
        elif kind == "Secret" and number == 3:
            obj["type"] = value.decode()
        elif isinstance(value, bytes):
            maps.setdefault(number, []).append(value)
        elif number == (5 if kind == "Secret" else 4):
            obj["immutable"] = bool(value)
    if kind == "Secret":
        if 2 in maps:
            obj["data"] = _pb_map(maps[2], binary=True)
        if 4 in maps:
            obj["stringData"] = _pb_map(maps[4])
    elif kind == "ConfigMap":
        if 2 in maps:
            obj["data"] = _pb_map(maps[2])
        if 3 in maps:
            obj["binaryData"] = _pb_map(maps[3], binary=True)
    return obj
