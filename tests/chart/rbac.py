"""RBAC of rendered manifests, evaluated as kube-apiserver's RBAC authorizer does
(kubernetes plugin/pkg/auth/authorizer/rbac/rbac.go: RuleAllows = VerbMatches && APIGroupMatches
&& ResourceMatches && ResourceNameMatches), for the chart's ServiceAccounts. Shared by the chart
tests that compare grants with the code's calls and those that audit what a Job really did."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Manifest = dict[str, Any]

#: Kubernetes' default ClusterRole system:basic-user, bound to system:authenticated: every
#: authenticated user may review their own access (plugin/pkg/auth/authorizer/rbac/bootstrappolicy).
BASIC_USER = ({"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
               "verbs": ["create"]},)


def bound_rules(docs: list[Manifest], sa: str, sa_namespace: str) -> Iterator[tuple[str, Manifest]]:
    """(namespace or "" for cluster-wide, rule) for every rule bound to the ServiceAccount."""
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding") or subject not in b.get("subjects", []):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else ""
        (role,) = [d for d in docs if d["kind"] == ref["kind"] and d["metadata"]["name"] == ref["name"]
                   and d["metadata"].get("namespace", "") == (ns if ref["kind"] == "Role" else "")]
        for rule in role["rules"]:
            yield ns, rule


def rule_allows(rule: Manifest, verb: str, group: str, resource: str, name: str = "") -> bool:
    return (verb in rule.get("verbs", []) and group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and (not rule.get("resourceNames") or name in rule["resourceNames"]))


def allows(docs: list[Manifest], sa: str, sa_namespace: str, verb: str, group: str, resource: str,
           namespace: str, name: str = "") -> bool:
    """Whether RBAC lets the ServiceAccount do it. `resource` may name a subresource ("nodes/status");
    `namespace` "" is a cluster-scoped request."""
    if any(rule_allows(r, verb, group, resource, name) for r in BASIC_USER):
        return True
    return any(rule_allows(rule, verb, group, resource, name) for ns, rule in bound_rules(docs, sa, sa_namespace)
               if ns in ("", namespace))


def grants(docs: list[Manifest], sa: str, sa_namespace: str) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """Every (verb, group, resource, namespace, resourceNames) the ServiceAccount is granted."""
    return {(v, g, res, ns, tuple(rule.get("resourceNames") or ()))
            for ns, rule in bound_rules(docs, sa, sa_namespace)
            for v in rule["verbs"] for g in rule["apiGroups"] for res in rule["resources"]}
