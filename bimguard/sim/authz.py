"""Authorization of the emulated API server: an opt-in deny list, and the access reviews.

kube-apiserver authorizes every request after authentication (and impersonation) and before any
handler, admission or storage sees it (k8s.io/apiserver `pkg/server/config.go`
DefaultBuildHandlerChain -> `pkg/endpoints/filters/authorization.go` WithAuthorization). The
emulator has no RBAC: everything is allowed unless a test denied it with
`ApiServer.deny(verb, resource, group=, namespace=, subresource=, user=)`. What a denial is
compared with are the attributes kube-apiserver derives from the URL alone
(`pkg/endpoints/request/requestinfo.go` NewRequestInfo, re-described in `request_attributes`):

- verb: POST create, GET/HEAD get, PUT update, PATCH patch, DELETE delete; a GET without a name is
  list, or watch when `watch` is anything but "false"/"0"; a DELETE without a name is
  deletecollection; the legacy `/api/v1/watch/...` prefix makes the verb watch;
- a list/watch whose fieldSelector pins `metadata.name=X` carries the name X;
- `/api/v1/namespaces/N` (and `/status`, `/finalize`) is resource `namespaces` *in namespace N*;
- resource, subresource, API group, namespace; non-resource paths (discovery, /version, /healthz)
  are never denied.

A denied request gets what `pkg/endpoints/handlers/responsewriters/errors.go` Forbidden writes:
403, reason Forbidden, details {name, group, kind=resource}, and the message
`<resource>[.<group>] ["<name>" ]is forbidden: User "<user>" cannot <verb> resource
"<resource>[/<subresource>]" in API group "<group>" in the namespace "<ns>"` (or `at the
cluster scope`), with `: <reason>` appended when the denial names a reason (RBAC gives none).

Matching (`Denial.matches`): verb, resource, group and subresource are equal or "*"
(subresource "" means the resource itself, "*" the resource and all its subresources; a
resource written "nodes/status" sets the subresource); `namespace=None` matches everywhere, a
namespace N matches requests in N *and* requests across all namespaces (namespace "": a
cluster-wide list needs the permission in every namespace, as with RBAC), `user=None` matches
every user, else the username. Users in the group `system:masters` are never denied: kube-apiserver
puts a privileged-group authorizer in front of every other one
(`pkg/kubeapiserver/authorizer/config.go`, `authorizerfactory.NewPrivilegedGroups`).

Access reviews (`pkg/registry/authorization/*/rest.go`, validation from
`pkg/apis/authorization/validation/validation.go`), all POST-only (other methods 405), answering
201 with the review and its `status` (`allowed`; never `denied`: a missing permission is
"no opinion", as RBAC answers; `reason` only when the denial names one):
- `selfsubjectaccessreviews` (authorization.k8s.io/v1): for the requesting user (what `kubectl auth
  can-i` sends);
- `subjectaccessreviews`: for `spec.user`/`spec.groups`;
- `namespaces/<ns>/localsubjectaccessreviews`: like subjectaccessreviews, the resource namespace must
  equal the review's.
And `tokenreviews` (authentication.k8s.io/v1, `pkg/registry/authentication/tokenreview`): a token
`ApiServer.add_user` knows is authenticated as that user, any other is not (the emulator's own
requests accept any token as the admin; a TokenReview is stricter, as a real authenticator is).
Non-resource attributes are allowed unless a denial names their path (`deny("get", "/metrics")`,
as an RBAC ClusterRole's nonResourceURLs would not grant it). The group is listed in discovery (`/apis`,
`/apis/authorization.k8s.io[/v1]`) so kubectl finds it.

Not emulated: RBAC objects are stored but never consulted; `selfsubjectrulesreviews` (`kubectl
auth can-i --list`) is not served; authorization of impersonation itself (the `impersonate` verb:
a request is authorized as the impersonated user); label/field selector authorization
(AuthorizeWithSelectors); admission webhooks are not called for access reviews.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from bimguard.sim.store import ApiError, bad_request

GROUP = "authorization.k8s.io"
VERSION = "v1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
PRIVILEGED_GROUP = "system:masters"  # k8s.io/apiserver/pkg/authentication/user.SystemPrivilegedGroup

#: Verbs a resource denial can name (kubectl's resourceVerbs plus the special ones).
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")

# requestinfo.go: path prefixes, verbs given as a path element, and the namespace subresources.
_API_PREFIXES = ("api", "apis")
_GROUPLESS_PREFIXES = ("api",)
_SPECIAL_VERBS = ("proxy", "watch")
_SPECIAL_VERBS_NO_SUBRESOURCES = ("proxy",)
_NAMESPACE_SUBRESOURCES = ("status", "finalize")

# The review kinds the emulator serves: plural -> (kind, namespaced).
REVIEWS: dict[str, tuple[str, bool]] = {
    "localsubjectaccessreviews": ("LocalSubjectAccessReview", True),
    "selfsubjectaccessreviews": ("SelfSubjectAccessReview", False),
    "subjectaccessreviews": ("SubjectAccessReview", False),
}


@dataclass(frozen=True)
class Attributes:
    """authorizer.AttributesRecord: who asks to do what."""

    user: Mapping[str, Any]
    verb: str
    resource_request: bool = True
    namespace: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""

    @property
    def username(self) -> str:
        return str(self.user.get("username", ""))

    @property
    def groups(self) -> list[str]:
        return list(self.user.get("groups") or [])


@dataclass(frozen=True)
class Denial:
    """One entry of the deny list (see the module docstring for how it matches)."""

    verb: str
    resource: str
    group: str = ""
    namespace: str | None = None
    subresource: str = ""
    user: str | None = None
    reason: str = ""

    def matches(self, attrs: Attributes) -> bool:
        if not attrs.resource_request:
            # A denial whose resource is a path ("/metrics") names a non-resource URL.
            return (self.resource.startswith("/") and self.resource == attrs.path and self.verb in ("*", attrs.verb)
                    and (self.user is None or self.user == attrs.username))
        if self.resource.startswith("/"):
            return False
        if self.user is not None and self.user != attrs.username:
            return False
        if self.verb not in ("*", attrs.verb):
            return False
        if self.group not in ("*", attrs.group):
            return False
        if self.resource not in ("*", attrs.resource):
            return False
        if self.subresource != "*" and self.subresource != attrs.subresource:
            return False
        return not (self.namespace is not None and attrs.namespace not in ("", self.namespace))


@dataclass
class Authorizer:
    """The deny list. `authorize` answers (allowed, reason) like authorizer.Authorize."""

    denials: list[Denial] = field(default_factory=list)
    #: every refused request, as (username, verb, resource[/subresource], namespace) (debugging aid)
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)

    def deny(self, verb: str, resource: str, *, group: str = "", namespace: str | None = None,
             subresource: str = "", user: str | None = None, reason: str = "") -> Denial:
        if "/" in resource and not resource.startswith("/"):  # "/metrics" is a non-resource URL
            if subresource:
                raise ValueError(f"resource {resource!r} already names a subresource")
            resource, subresource = resource.split("/", 1)
        if verb != "*" and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}: one of {', '.join(VERBS)} or '*'")
        denial = Denial(verb, resource, group, namespace, subresource, user, reason)
        self.denials.append(denial)
        return denial

    def allow(self, denial: Denial | None = None) -> None:
        """Drop one denial (as returned by `deny`), or all of them."""
        if denial is None:
            self.denials.clear()
        else:
            self.denials.remove(denial)

    def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        if PRIVILEGED_GROUP in attrs.groups:
            return True, ""
        for denial in self.denials:
            if denial.matches(attrs):
                return False, denial.reason
        return True, ""

    def check(self, attrs: Attributes) -> None:
        """Raise the 403 kube-apiserver's authorization filter writes, if `attrs` is denied."""
        allowed, reason = self.authorize(attrs)
        if not allowed:
            resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
            self.refused.append((attrs.username, attrs.verb, resource, attrs.namespace))
            raise forbidden(attrs, reason)


# --- request attributes (requestinfo.go) ----------------------------------------------------


def _split(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []


def _field_selector_name(selector: str | None) -> str:
    """fields.Selector.RequiresExactMatch("metadata.name") on the raw selector (the selector must
    be that one requirement or have it among its terms; `=` and `==` both count)."""
    if not selector:
        return ""
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and not key.endswith("!") and key.strip() == "metadata.name":
                value = value.strip()
                # path.IsValidPathSegmentName: no "/" or "%", not "." or "..".
                if value and value not in (".", "..") and "/" not in value and "%" not in value:
                    return value
                return ""
    return ""


def request_attributes(method: str, path: str, query: Mapping[str, str], user: Mapping[str, Any]) -> Attributes:
    """The attributes of an HTTP request, as NewRequestInfo + GetAuthorizerAttributes build them."""
    parts = [unquote(p) for p in _split(path)]
    non_resource = Attributes(user, method.lower(), resource_request=False, path=path)
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in _GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            return non_resource  # "unable to determine kind and namespace": the filter 500s; not served here anyway
        verb, parts = parts[0], parts[1:]
    else:
        verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in _SPECIAL_VERBS_NO_SUBRESOURCES else ""
    if not name and verb == "get":
        watch = query.get("watch")
        verb = "list" if watch is None or watch.lower() in ("false", "0") else "watch"
        name = _field_selector_name(query.get("fieldSelector"))
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, True, namespace, group, version, resource, subresource, name, path)


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """responsewriters.Forbidden: apierrors.NewForbidden(group/resource, name, forbiddenMessage)."""
    if not attrs.resource_request:
        message = f"User {_q(attrs.username)} cannot {attrs.verb} path {_q(attrs.path)}"
    else:
        resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
        message = (f"User {_q(attrs.username)} cannot {attrs.verb} resource {_q(resource)} "
                   f"in API group {_q(attrs.group)} ")
        message += f"in the namespace {_q(attrs.namespace)}" if attrs.namespace else "at the cluster scope"
    # "Avoid emitting errors that look like valid HTML."
    message = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if reason:
        message = f"{message}: {reason}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    details: dict[str, Any] = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.group:
        details["group"] = attrs.group
    if attrs.resource:
        details["kind"] = attrs.resource
    if not qualified:
        text = f"forbidden: {message}"
    elif attrs.name:
        text = f"{qualified} {_q(attrs.name)} is forbidden: {message}"
    else:
        text = f"{qualified} is forbidden: {message}"
    return ApiError(403, "Forbidden", text, details)


def _q(s: str) -> str:
    """Go's %q for the strings that occur here (ASCII names; json escaping agrees for those)."""
    return json.dumps(s, ensure_ascii=False)


# --- access reviews -------------------------------------------------------------------------


def discovery_resources() -> list[dict]:
    """The APIResourceList entries of authorization.k8s.io/v1 that the emulator serves."""
    return [{"name": plural, "singularName": plural[:-1], "namespaced": namespaced, "kind": kind,
             "verbs": ["create"], "storageVersionHash": ""}
            for plural, (kind, namespaced) in sorted(REVIEWS.items())]


def review_path(parts: list[str]) -> tuple[str, str | None] | None:
    """(plural, namespace) if the path parts name an access-review collection, else None."""
    if parts[:3] != ["apis", GROUP, VERSION]:
        return None
    rest = parts[3:]
    if len(rest) == 1 and rest[0] in REVIEWS and not REVIEWS[rest[0]][1]:
        return rest[0], None
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] in REVIEWS and REVIEWS[rest[2]][1]:
        return rest[2], rest[1]
    return None


def spec_from_protobuf(kind: str, data: bytes, fields: Any) -> dict:
    """A review's spec from its protobuf bytes (k8s.io/api/authorization/v1/generated.proto:
    ResourceAttributes namespace=1 verb=2 group=3 version=4 resource=5 subresource=6 name=7,
    NonResourceAttributes path=1 verb=2, SubjectAccessReviewSpec user=3 groups=4 uid=6);
    `fields` is the wire-level decoder (field number, int | bytes) pairs. Selectors and extra are
    not read."""
    def strings(raw: bytes, names: dict[int, str]) -> dict:
        return {names[n]: v.decode() for n, v in fields(raw) if n in names and isinstance(v, bytes)}

    spec: dict[str, Any] = {}
    for number, value in fields(data):
        if number == 1:
            spec["resourceAttributes"] = strings(value, {1: "namespace", 2: "verb", 3: "group", 4: "version",
                                                         5: "resource", 6: "subresource", 7: "name"})
        elif number == 2:
            spec["nonResourceAttributes"] = strings(value, {1: "path", 2: "verb"})
        elif kind != "SelfSubjectAccessReview" and number == 3:
            spec["user"] = value.decode()
        elif kind != "SelfSubjectAccessReview" and number == 4:
            spec.setdefault("groups", []).append(value.decode())
        elif kind != "SelfSubjectAccessReview" and number == 6:
            spec["uid"] = value.decode()
    return spec


def _invalid(kind: str, name: str, errors: list[tuple[str, str, str]]) -> ApiError:
    """apierrors.NewInvalid for (field, rendered value, detail) triples."""
    rendered = [f"{f}: Invalid value: {v}: {d}" for f, v, d in errors]
    agg = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details = {"name": name, "group": GROUP, "kind": kind,
               "causes": [{"reason": "FieldValueInvalid", "message": f"Invalid value: {v}: {d}", "field": f}
                          for f, v, d in errors]}
    return ApiError(422, "Invalid", f'{kind}.{GROUP} "{name}" is invalid: {agg}', details)


def _go_struct(type_name: str, value: Mapping[str, Any], fields: Iterable[tuple[str, str]]) -> str:
    """%#v of a small struct of strings (how field.Invalid prints a struct pointer)."""
    return f"authorization.{type_name}{{" + ", ".join(f"{go}:{_q(str(value.get(js) or ''))}" for go, js in fields) + "}"


_NON_RESOURCE_FIELDS = (("Path", "path"), ("Verb", "verb"))


def _spec_errors(spec: Mapping[str, Any], subject: bool) -> list[tuple[str, str, str]]:
    """ValidateSubjectAccessReviewSpec / ValidateSelfSubjectAccessReviewSpec."""
    errors = []
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if resource is not None and non_resource is not None:
        errors.append(("spec.nonResourceAttributes", _go_struct("NonResourceAttributes", non_resource, _NON_RESOURCE_FIELDS),
                       "cannot be specified in combination with resourceAttributes"))
    if resource is None and non_resource is None:
        errors.append(("spec.resourceAttributes", '"null"',
                       "exactly one of nonResourceAttributes or resourceAttributes must be specified"))
    if subject and not spec.get("user") and not spec.get("groups"):
        errors.append(("spec.user", _q(str(spec.get("user") or "")), "at least one of user or group must be specified"))
    return errors


def review(authorizer: Authorizer, plural: str, namespace: str | None, body: Any,
           requester: Mapping[str, Any]) -> dict:
    """Answer one access review (`body` already decoded); raises 400/422 like the REST handlers."""
    kind, _ = REVIEWS[plural]
    if not isinstance(body, dict):
        raise bad_request(f"not a {kind}: {body!r}")
    if body.get("apiVersion") not in (None, GROUP_VERSION):
        raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                          f"API version ({GROUP_VERSION})")
    if body.get("kind") not in (None, kind):
        raise bad_request(f"not a {kind}: {body.get('kind')}")
    if namespace is not None and (body.get("metadata") or {}).get("namespace") not in (None, "", namespace):
        # handlers/create.go, before the REST handler runs.
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise bad_request(f"not a {kind}: spec must be an object")
    meta = {k: v for k, v in (body.get("metadata") or {}).items()
            if v not in (None, "", {}, []) and k not in ("managedFields",)}
    errors = _spec_errors(spec, subject=plural != "selfsubjectaccessreviews")
    if plural == "localsubjectaccessreviews":
        meta_ns = meta.pop("namespace", "") or namespace or ""
        if meta:
            errors.append(("metadata", "\"object\"", "must be empty except for namespace"))
        attrs_ns = (spec.get("resourceAttributes") or {}).get("namespace", "") if spec.get("resourceAttributes") is not None else None
        if attrs_ns is not None and attrs_ns != meta_ns:
            errors.append(("spec.resourceAttributes.namespace", _q(attrs_ns), "must match metadata.namespace"))
        if spec.get("nonResourceAttributes") is not None:
            errors.append(("spec.nonResourceAttributes",
                           _go_struct("NonResourceAttributes", spec["nonResourceAttributes"], _NON_RESOURCE_FIELDS),
                           "disallowed on this kind of request"))
    elif meta:
        errors.append(("metadata", "\"object\"", "must be empty"))
    if errors:
        raise _invalid(kind, "", errors)
    if plural == "selfsubjectaccessreviews":
        user: Mapping[str, Any] = requester
    else:
        user = {"username": spec.get("user") or "", "groups": list(spec.get("groups") or [])}
    ra = spec.get("resourceAttributes")
    if ra is not None:
        attrs = Attributes(user, str(ra.get("verb") or ""), True, str(ra.get("namespace") or ""),
                           str(ra.get("group") or ""), str(ra.get("version") or "") or "*",
                           str(ra.get("resource") or ""), str(ra.get("subresource") or ""), str(ra.get("name") or ""))
    else:
        nra = spec.get("nonResourceAttributes") or {}
        attrs = Attributes(user, str(nra.get("verb") or ""), False, path=str(nra.get("path") or ""))
    allowed, reason = authorizer.authorize(attrs)
    status: dict[str, Any] = {"allowed": allowed}
    if reason and not allowed:
        status["reason"] = reason
    out_meta: dict[str, Any] = {"creationTimestamp": None}
    if plural == "localsubjectaccessreviews":
        out_meta["namespace"] = namespace
    return {"kind": kind, "apiVersion": GROUP_VERSION, "metadata": out_meta, "spec": spec, "status": status}


AUTHN_GROUP_VERSION = "authentication.k8s.io/v1"


def token_review(body: Any, users: Mapping[str, Mapping[str, Any]]) -> dict:
    """A TokenReview's answer: authenticated as the user `add_user` gave the token, else not."""
    if not isinstance(body, dict) or body.get("kind") not in (None, "TokenReview"):
        raise bad_request("not a TokenReview")
    spec = body.get("spec") or {}
    token = str(spec.get("token") or "")
    if not token:
        raise ApiError(422, "Invalid", 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value',
                       {"kind": "TokenReview", "group": "authentication.k8s.io"})
    user = users.get(token)
    status: dict[str, Any] = {"authenticated": False}
    if user is not None:
        status = {"authenticated": True, "user": {k: v for k, v in user.items() if k in ("username", "uid", "groups", "extra")},
                  "audiences": list(spec.get("audiences") or [])}
    return {"kind": "TokenReview", "apiVersion": AUTHN_GROUP_VERSION, "metadata": {"creationTimestamp": None},
            "spec": spec, "status": status}
