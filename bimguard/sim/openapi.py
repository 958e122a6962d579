"""OpenAPI v3 documents of the emulated API server (pure functions of the resource registry).

kubectl reads `/openapi/v3` (an index of group-versions) and one document per group-version:
- `QueryParamVerifierV3` looks for a PATCH operation whose `x-kubernetes-group-version-kind`
  is the object's GVK and which declares the `fieldValidation` query parameter; if it finds one,
  kubectl leaves field validation to the server (`?fieldValidation=Strict`).
- `kubectl apply` (client-side) uses strategic merge patch only when that PATCH operation lists
  `application/strategic-merge-patch+json`; custom resources do not, so it sends a JSON merge
  patch, as with a real cluster. Built-in types here do not list it either (their schemas are
  minimal), so kubectl falls back to its compiled-in types for them.
Schema names follow kube-openapi (`io.longhorn.v1beta2.Node`, `io.k8s.api.core.v1.Pod`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from bimguard.sim.resources import Registry, ResourceType

SERVER_VERSION = "v1.32.0"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"

_GROUP_PREFIX = {
    "": "io.k8s.api.core",
    "coordination.k8s.io": "io.k8s.api.coordination",
    "admissionregistration.k8s.io": "io.k8s.api.admissionregistration",
    "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
    "apps": "io.k8s.api.apps",
    "batch": "io.k8s.api.batch",
    "policy": "io.k8s.api.policy",
    "rbac.authorization.k8s.io": "io.k8s.api.rbac",
}


def schema_name(rt: ResourceType, list_: bool = False) -> str:
    group = rt.key.group
    prefix = _GROUP_PREFIX.get(group) or ".".join(reversed(group.split(".")))
    return f"{prefix}.{rt.key.version}.{rt.list_kind if list_ else rt.kind}"


def gv_path(group_version: str) -> str:
    return f"api/{group_version}" if "/" not in group_version else f"apis/{group_version}"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, type_: str = "string") -> dict:
    return {"name": name, "in": "query", "description": description, "schema": {"type": type_, "uniqueItems": True}}


_DRY_RUN = _query("dryRun", "When present, indicates that modifications should not be persisted.")
_FIELD_MANAGER = _query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes.")
_FIELD_VALIDATION = _query(
    "fieldValidation",
    "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown "
    "or duplicate fields. Valid values are: - Ignore - Warn - Strict",
)
_LIST_PARAMS = [
    _query("allowWatchBookmarks", "requests watch events with type BOOKMARK", "boolean"),
    _query("continue", "The continue option should be set when retrieving more results from the server."),
    _query("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
    _query("labelSelector", "A selector to restrict the list of returned objects by their labels."),
    _query("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
    _query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from."),
    _query("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
    _query("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`.", "boolean"),
    _query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
    _query("watch", "Watch for changes to the described resources.", "boolean"),
]


def _op(rt: ResourceType, action: str, op_id: str, *, body: str | None = None, response: str | None = None,
        params: list[dict] | None = None, patch_types: list[str] | None = None) -> dict:
    op: dict[str, Any] = {
        "operationId": op_id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.key.group, "version": rt.key.version, "kind": rt.kind},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(response or schema_name(rt))}}}},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"content": {"*/*": {"schema": _ref(body)}}, "required": True}
    if patch_types:
        op["requestBody"] = {"content": {t: {"schema": {"type": "object"}} for t in patch_types}, "required": True}
    return op


def _paths(rt: ResourceType) -> dict[str, dict]:
    key = rt.key
    base = f"/{gv_path(key.group_version)}"
    name = rt.kind
    ns_part = "namespaces/{namespace}/" if rt.namespaced else ""
    ns_word = "Namespaced" if rt.namespaced else ""
    path_params = [{"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}] if rt.namespaced else []
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    write = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
    paths: dict[str, dict] = {
        f"{base}/{ns_part}{key.plural}": {
            "get": _op(rt, "list", f"list{ns_word}{name}", response=schema_name(rt, True), params=_LIST_PARAMS),
            "post": _op(rt, "post", f"create{ns_word}{name}", body=schema_name(rt), params=write),
            "delete": _op(rt, "deletecollection", f"deletecollection{ns_word}{name}", response=STATUS),
            "parameters": path_params,
        },
        f"{base}/{ns_part}{key.plural}/{{name}}": {
            "get": _op(rt, "get", f"read{ns_word}{name}"),
            "put": _op(rt, "put", f"replace{ns_word}{name}", body=schema_name(rt), params=write),
            "patch": _op(rt, "patch", f"patch{ns_word}{name}", params=write + [_query("force", "Force is going to force Apply requests.", "boolean")],
                         patch_types=patch_types),
            "delete": _op(rt, "delete", f"delete{ns_word}{name}", response=STATUS, params=[_DRY_RUN]),
            "parameters": path_params + name_param,
        },
    }
    if rt.status_subresource:
        paths[f"{base}/{ns_part}{key.plural}/{{name}}/status"] = {
            "get": _op(rt, "get", f"read{ns_word}{name}Status"),
            "put": _op(rt, "put", f"replace{ns_word}{name}Status", body=schema_name(rt), params=write),
            "patch": _op(rt, "patch", f"patch{ns_word}{name}Status", params=write, patch_types=patch_types),
            "parameters": path_params + name_param,
        }
    if rt.namespaced:
        paths[f"{base}/{key.plural}"] = {
            "get": _op(rt, "list", f"list{name}ForAllNamespaces", response=schema_name(rt, True), params=_LIST_PARAMS),
        }
    return paths


def _object_schema(rt: ResourceType) -> dict:
    schema = copy.deepcopy(rt.schema) if rt.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    props = schema.setdefault("properties", {})
    props["metadata"] = {"allOf": [_ref(OBJECT_META)], "default": {}, "description": "Standard object's metadata."}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    schema["x-kubernetes-group-version-kind"] = [{"group": rt.key.group, "kind": rt.kind, "version": rt.key.version}]
    return schema


def _list_schema(rt: ResourceType) -> dict:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "items": {"type": "array", "items": _ref(schema_name(rt))},
            "metadata": {"allOf": [_ref(LIST_META)], "default": {}},
        },
        "x-kubernetes-group-version-kind": [{"group": rt.key.group, "kind": rt.list_kind, "version": rt.key.version}],
    }


_META_SCHEMAS: dict[str, dict] = {
    OBJECT_META: {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "properties": {
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set",
                           "x-kubernetes-patch-strategy": "merge"},
            "generateName": {"type": "string"},
            "generation": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "resourceVersion": {"type": "string"},
            "selfLink": {"type": "string"},
            "uid": {"type": "string"},
        },
    },
    LIST_META: {
        "type": "object",
        "properties": {"continue": {"type": "string"}, "remainingItemCount": {"type": "integer", "format": "int64"},
                       "resourceVersion": {"type": "string"}, "selfLink": {"type": "string"}},
    },
    STATUS: {
        "type": "object",
        "properties": {"apiVersion": {"type": "string"}, "code": {"type": "integer", "format": "int32"},
                       "details": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                       "kind": {"type": "string"}, "message": {"type": "string"},
                       "metadata": {"allOf": [_ref(LIST_META)], "default": {}},
                       "reason": {"type": "string"}, "status": {"type": "string"}},
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
    },
}


def document(registry: Registry, group_version: str) -> dict | None:
    """The OpenAPI v3 document for one group-version, or None if it is not served."""
    types = registry.group_versions().get(group_version)
    if not types:
        return None
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = dict(copy.deepcopy(_META_SCHEMAS))
    for rt in types:
        paths.update(_paths(rt))
        schemas[schema_name(rt)] = _object_schema(rt)
        schemas[schema_name(rt, True)] = _list_schema(rt)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def doc_hash(doc: dict) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()


def index(registry: Registry) -> dict:
    paths = {}
    for gv in sorted(registry.group_versions()):
        doc = document(registry, gv)
        assert doc is not None
        paths[gv_path(gv)] = {"serverRelativeURL": f"/openapi/v3/{gv_path(gv)}?hash={doc_hash(doc)}"}
    return {"paths": paths}
