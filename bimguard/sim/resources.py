"""The resource catalogue of the emulated API server: which resources exist and how they behave.

`ResourceKey` names a resource the way the REST paths do: (group, version, plural), with
group "" for core/v1. `ResourceKey.parse` accepts the string forms "v1/pods" and
"longhorn.io/v1beta2/nodes" so in-process callers can write either.

Built-in resources carry small hand-written schemas (enough for pruning of top-level fields,
MutatingWebhookConfiguration validation and OpenAPI documents); custom resources take the
storage version's `openAPIV3Schema` from their CRD. Only the storage version of a CRD is served
and `spec.conversion` is ignored.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from typing import Any

import yaml

from bimguard.sim.schema import Schema


@dataclass(frozen=True, order=True)
class ResourceKey:
    group: str
    version: str
    plural: str

    @classmethod
    def parse(cls, value: "ResourceKey | str") -> "ResourceKey":
        if isinstance(value, ResourceKey):
            return value
        parts = value.split("/")
        if len(parts) == 2:
            return cls("", parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        raise ValueError(f"resource key {value!r} is not 'version/plural' or 'group/version/plural'")

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`plural.group` as used in kube-apiserver messages (`nodes.longhorn.io`, `pods`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def __str__(self) -> str:
        return f"{self.group_version}/{self.plural}"


@dataclass(frozen=True)
class ResourceType:
    key: ResourceKey
    kind: str
    singular: str
    namespaced: bool
    status_subresource: bool = False
    schema: Schema | None = None
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[dict, ...] = ()
    crd: bool = False
    # Generic registry `ReturnDeletedObject`: pods return the object from DELETE, CRs a Status.
    return_deleted_object: bool = False
    # `AllowUnconditionalUpdate`: custom resources require metadata.resourceVersion on PUT.
    allow_unconditional_update: bool = True

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def api_version(self) -> str:
        return self.key.group_version

    @property
    def qualified_kind(self) -> str:
        """`Kind.group` as in `Node.longhorn.io "x" is invalid` (schema.GroupKind.String)."""
        return f"{self.kind}.{self.key.group}" if self.key.group else self.kind

    @property
    def verbs(self) -> list[str]:
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _obj(props: dict[str, Any] | None = None, *, preserve: bool = False, required: list[str] | None = None) -> Schema:
    out: Schema = {"type": "object"}
    if props is not None:
        out["properties"] = props
    if preserve:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if required:
        out["required"] = required
    return out


_STR: Schema = {"type": "string"}
_OPAQUE: Schema = _obj(preserve=True)
_STRMAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_BASE = {"apiVersion": _STR, "kind": _STR, "metadata": {"type": "object"}}

_LABEL_SELECTOR: Schema = _obj(
    {
        "matchLabels": _STRMAP,
        "matchExpressions": {
            "type": "array",
            "items": _obj(
                {
                    "key": _STR,
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": _STR},
                },
                required=["key", "operator"],
            ),
        },
    }
)

# admissionregistration.k8s.io/v1 MutatingWebhook, with the enums the real validation enforces
# (pkg/apis/admissionregistration/validation/validation.go).
_MUTATING_WEBHOOK: Schema = _obj(
    {
        "name": _STR,
        "clientConfig": _obj(
            {
                "url": _STR,
                "caBundle": {"type": "string", "format": "byte"},
                "service": _obj(
                    {"namespace": _STR, "name": _STR, "path": _STR, "port": {"type": "integer", "format": "int32"}},
                    required=["namespace", "name"],
                ),
            }
        ),
        "rules": {
            "type": "array",
            "items": _obj(
                {
                    "operations": {"type": "array", "items": {"type": "string", "enum": ["*", "CREATE", "UPDATE", "DELETE", "CONNECT"]}},
                    "apiGroups": {"type": "array", "items": _STR},
                    "apiVersions": {"type": "array", "items": _STR},
                    "resources": {"type": "array", "items": _STR},
                    "scope": {"type": "string", "enum": ["*", "Cluster", "Namespaced"]},
                }
            ),
        },
        "failurePolicy": {"type": "string", "enum": ["Ignore", "Fail"]},
        "matchPolicy": {"type": "string", "enum": ["Exact", "Equivalent"]},
        "namespaceSelector": _LABEL_SELECTOR,
        "objectSelector": _LABEL_SELECTOR,
        "sideEffects": {"type": "string", "enum": ["Unknown", "None", "Some", "NoneOnDryRun"]},
        "timeoutSeconds": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 30},
        "admissionReviewVersions": {"type": "array", "items": _STR},
        "reinvocationPolicy": {"type": "string", "enum": ["Never", "IfNeeded"]},
        "matchConditions": {"type": "array", "items": _OPAQUE},
    },
    required=["name", "clientConfig", "sideEffects", "admissionReviewVersions"],
)


def _builtin() -> list[ResourceType]:
    core = lambda plural: ResourceKey("", "v1", plural)  # noqa: E731
    return [
        ResourceType(
            core("namespaces"), "Namespace", "namespace", False, True,
            _obj({**_BASE, "spec": _OPAQUE, "status": _OPAQUE}), ("ns",), return_deleted_object=True,
        ),
        ResourceType(
            core("pods"), "Pod", "pod", True, True,
            _obj({**_BASE, "spec": _OPAQUE, "status": _OPAQUE}), ("po",), ("all",), return_deleted_object=True,
        ),
        ResourceType(
            core("secrets"), "Secret", "secret", True, False,
            _obj({**_BASE, "data": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
                  "stringData": _STRMAP, "type": _STR, "immutable": {"type": "boolean"}}),
            return_deleted_object=True,
        ),
        ResourceType(
            core("configmaps"), "ConfigMap", "configmap", True, False,
            _obj({**_BASE, "data": _STRMAP, "binaryData": _STRMAP, "immutable": {"type": "boolean"}}), ("cm",),
            return_deleted_object=True,
        ),
        ResourceType(
            core("services"), "Service", "service", True, True,
            _obj({**_BASE, "spec": _OPAQUE, "status": _OPAQUE}), ("svc",), ("all",), return_deleted_object=True,
        ),
        ResourceType(
            core("events"), "Event", "event", True, False,
            _obj({**_BASE, "involvedObject": _OPAQUE, "reason": _STR, "message": _STR, "source": _OPAQUE,
                  "firstTimestamp": {"type": "string", "nullable": True}, "lastTimestamp": {"type": "string", "nullable": True},
                  "count": {"type": "integer"}, "type": _STR, "eventTime": {"type": "string", "nullable": True},
                  "series": _OPAQUE, "action": _STR, "related": _OPAQUE, "reportingComponent": _STR,
                  "reportingInstance": _STR}),
            ("ev",), return_deleted_object=True,
        ),
        ResourceType(
            ResourceKey("coordination.k8s.io", "v1", "leases"), "Lease", "lease", True, False,
            _obj({**_BASE, "spec": _obj({"holderIdentity": {"type": "string", "nullable": True},
                                         "leaseDurationSeconds": {"type": "integer", "nullable": True},
                                         "acquireTime": {"type": "string", "nullable": True},
                                         "renewTime": {"type": "string", "nullable": True},
                                         "leaseTransitions": {"type": "integer", "nullable": True},
                                         "strategy": {"type": "string", "nullable": True},
                                         "preferredHolder": {"type": "string", "nullable": True}})}),
            return_deleted_object=True,
        ),
        ResourceType(
            ResourceKey("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations"),
            "MutatingWebhookConfiguration", "mutatingwebhookconfiguration", False, False,
            _obj({**_BASE, "webhooks": {"type": "array", "items": _MUTATING_WEBHOOK}}),
            categories=("api-extensions",), return_deleted_object=False,
        ),
        ResourceType(
            ResourceKey("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
            "CustomResourceDefinition", "customresourcedefinition", False, True,
            _obj({**_BASE, "spec": _obj({"group": _STR, "names": _OPAQUE, "scope": {"type": "string", "enum": ["Namespaced", "Cluster"]},
                                         "versions": {"type": "array", "items": _OPAQUE}, "conversion": _OPAQUE,
                                         "preserveUnknownFields": {"type": "boolean"}},
                                        required=["group", "names", "scope", "versions"]),
                  "status": _OPAQUE}, required=["spec"]),
            ("crd", "crds"), ("api-extensions",), return_deleted_object=True,
        ),
        *_stored_only(),
    ]


def _stored_only() -> list[ResourceType]:
    """Kinds a Helm chart or manifest applies besides the ones above. They are stored and served
    with full API semantics, but no controller acts on them (no Deployment -> Pod, no Job runs,
    RBAC is not enforced, ValidatingWebhookConfigurations are not dispatched). The exception:
    ValidatingAdmissionPolicies and their bindings, which bimguard/sim/policy.py evaluates."""
    spec_status = _obj({**_BASE, "spec": _OPAQUE, "status": _OPAQUE})
    rbac = "rbac.authorization.k8s.io"
    role = _obj({**_BASE, "rules": {"type": "array", "items": _OPAQUE}, "aggregationRule": _OPAQUE})
    binding = _obj({**_BASE, "subjects": {"type": "array", "items": _OPAQUE}, "roleRef": _OPAQUE})
    return [
        ResourceType(ResourceKey("", "v1", "serviceaccounts"), "ServiceAccount", "serviceaccount", True, False,
                     _obj({**_BASE, "secrets": {"type": "array", "items": _OPAQUE}, "imagePullSecrets": {"type": "array", "items": _OPAQUE},
                           "automountServiceAccountToken": {"type": "boolean"}}), ("sa",), return_deleted_object=True),
        ResourceType(ResourceKey("apps", "v1", "deployments"), "Deployment", "deployment", True, True, spec_status,
                     ("deploy",), ("all",), return_deleted_object=True),
        ResourceType(ResourceKey("batch", "v1", "jobs"), "Job", "job", True, True, spec_status, (), ("all",),
                     return_deleted_object=True),
        ResourceType(ResourceKey("batch", "v1", "cronjobs"), "CronJob", "cronjob", True, True, spec_status, ("cj",),
                     ("all",), return_deleted_object=True),
        ResourceType(ResourceKey("policy", "v1", "poddisruptionbudgets"), "PodDisruptionBudget", "poddisruptionbudget",
                     True, True, spec_status, ("pdb",), return_deleted_object=True),
        ResourceType(ResourceKey(rbac, "v1", "roles"), "Role", "role", True, False, role, return_deleted_object=True),
        ResourceType(ResourceKey(rbac, "v1", "rolebindings"), "RoleBinding", "rolebinding", True, False, binding,
                     return_deleted_object=True),
        ResourceType(ResourceKey(rbac, "v1", "clusterroles"), "ClusterRole", "clusterrole", False, False, role,
                     return_deleted_object=True),
        ResourceType(ResourceKey(rbac, "v1", "clusterrolebindings"), "ClusterRoleBinding", "clusterrolebinding", False,
                     False, binding, return_deleted_object=True),
        ResourceType(ResourceKey("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations"),
                     "ValidatingWebhookConfiguration", "validatingwebhookconfiguration", False, False,
                     _obj({**_BASE, "webhooks": {"type": "array", "items": _OPAQUE}}), categories=("api-extensions",)),
        # Evaluated by bimguard/sim/policy.py (the ValidatingAdmissionPolicy plugin).
        ResourceType(ResourceKey("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies"),
                     "ValidatingAdmissionPolicy", "validatingadmissionpolicy", False, True, spec_status,
                     categories=("api-extensions",), return_deleted_object=True),
        ResourceType(ResourceKey("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings"),
                     "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybinding", False, False,
                     _obj({**_BASE, "spec": _OPAQUE}), categories=("api-extensions",), return_deleted_object=True),
    ]


BUILTIN: tuple[ResourceType, ...] = tuple(_builtin())


def resource_type_from_crd(crd: dict) -> ResourceType:
    """The served (storage) version of a CRD as a ResourceType."""
    spec = crd["spec"]
    versions = spec.get("versions") or []
    storage = next((v for v in versions if v.get("storage")), versions[0] if versions else None)
    if storage is None:
        raise ValueError(f"CRD {crd['metadata']['name']} has no versions")
    names = spec["names"]
    schema = (storage.get("schema") or {}).get("openAPIV3Schema")
    return ResourceType(
        key=ResourceKey(spec["group"], storage["name"], names["plural"]),
        kind=names["kind"],
        singular=names.get("singular") or names["kind"].lower(),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        status_subresource="status" in (storage.get("subresources") or {}),
        schema=schema,
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        printer_columns=tuple(storage.get("additionalPrinterColumns") or ()),
        crd=True,
        return_deleted_object=False,
        allow_unconditional_update=False,
    )


#: The Longhorn CRD sets shipped in `bimguard/sim/data/` (see the README there), by release line.
LONGHORN_CRD_TAGS = {"v1.7": "v1.7.2", "v1.8": "v1.8.1", "v1.9": "v1.9.1"}


def longhorn_crd_tag(version: str) -> str:
    """The tag whose CRDs stand in for Longhorn `version` ("v1.8.2" -> "v1.8.1")."""
    line = ".".join(version.lstrip("v").split(".")[:2])
    try:
        return LONGHORN_CRD_TAGS[f"v{line}"]
    except KeyError:
        raise ValueError(f"the emulator models Longhorn {', '.join(LONGHORN_CRD_TAGS)}, not {version}") from None


def longhorn_crds(version: str = "v1.7.2") -> list[dict]:
    """The Longhorn CRDs of `version`'s release line; fresh copies each call (parsed once:
    every ApiServer installs them)."""
    return copy.deepcopy(_parsed_longhorn_crds(longhorn_crd_tag(version)))


@functools.lru_cache(maxsize=None)
def _parsed_longhorn_crds(tag: str) -> list[dict]:
    data = importlib_resources.files("bimguard.sim").joinpath("data")
    text = data.joinpath(f"longhorn-crds-{tag}.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "CustomResourceDefinition"]


@dataclass
class Registry:
    """Mutable lookup of served resources; CRDs come and go at runtime."""

    types: dict[ResourceKey, ResourceType] = field(default_factory=dict)

    def add(self, rt: ResourceType) -> None:
        self.types[rt.key] = rt

    def remove(self, key: ResourceKey) -> None:
        self.types.pop(key, None)

    def get(self, key: ResourceKey) -> ResourceType | None:
        return self.types.get(key)

    def group_versions(self) -> dict[str, list[ResourceType]]:
        out: dict[str, list[ResourceType]] = {}
        for rt in sorted(self.types.values(), key=lambda r: r.key):
            out.setdefault(rt.key.group_version, []).append(rt)
        return out
