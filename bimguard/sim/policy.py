"""ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) in the emulated API server.

Re-described from kube-apiserver v1.32 (k8s.io/apiserver `pkg/admission/plugin/policy/validating`:
`dispatcher.go`, `validator.go`; the matching in `pkg/admission/plugin/policy/matching` and
`pkg/admission/plugin/webhook/predicates`). No code copied.

Where it runs: a validating plugin, after PodSecurity and before the validating webhooks
(`pkg/kubeapiserver/options/plugins.go` AllOrderedPlugins), on the object as it would be stored,
for every operation the policy matches, dry runs included.

What it does, for every ValidatingAdmissionPolicyBinding whose policy exists:
- the request must match the policy's `matchConstraints` (resourceRules minus
  excludeResourceRules, namespaceSelector, objectSelector; `webhook/predicates` semantics, shared
  with the webhooks: bimguard.sim.admission) and, if set, the binding's `matchResources`;
- `matchConditions` (CEL) must all be true, else the policy does not apply;
- each `validations[]` expression (CEL over `object`, `oldObject`, `request`) must be true. The first
  false one denies with its `message` (or "failed expression: EXPR") and `reason` (default
  Invalid), as `<resource> "NAME" is forbidden: ValidatingAdmissionPolicy 'POLICY' with binding
  'BINDING' denied request: MESSAGE` with the reason's HTTP code (Forbidden 403, Invalid 422,
  Unauthorized 401, RequestEntityTooLarge 413) -- `admission.NewForbidden` with the reason and
  code replaced, as dispatcher.go does;
- an expression that cannot be compiled or evaluated: with failurePolicy Fail (the default) the
  request is denied (`... denied request: expression 'EXPR' resulted in error: ...`), with Ignore
  the validation is skipped;
- `validationActions`: Deny is enforced; Warn becomes a `Warning` header
  (`Validation failed for ValidatingAdmissionPolicy 'P' with binding 'B': MESSAGE`); Audit is not
  emulated (no audit log).

The CEL implementation is the one the emulator's webhook matchConditions use
(bimguard.sim.admission: cel-expr-python, else cel-python): both declare `object`, `oldObject` and
`request`. Not emulated: `params`/`paramKind` and paramRef, `variables`, `namespaceObject`,
`authorizer`, `messageExpression`, `auditAnnotations`, type checking against the OpenAPI schema
when a policy is written (a typo in a field name is an evaluation error here, a creation-time
warning in kube-apiserver), the per-expression cost budget.
"""

from __future__ import annotations

from typing import Any

from bimguard.sim import admission
from bimguard.sim.resources import ResourceKey
from bimguard.sim.store import ApiError, Store

POLICIES = ResourceKey("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies")
BINDINGS = ResourceKey("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings")

_CODES = {"Forbidden": 403, "Invalid": 422, "Unauthorized": 401, "RequestEntityTooLarge": 413}


class _Failed(Exception):
    """An expression that could not be compiled or evaluated."""


def _matches(constraints: dict | None, attrs: admission.Attributes, ns_labels: dict[str, str] | None) -> bool:
    """matching.Matcher: the rules (minus the excluded ones) and the selectors."""
    if constraints is None:
        return True
    rules = constraints.get("resourceRules")
    if rules is not None and not any(admission.rule_matches(_rule(r), attrs) and _named(r, attrs) for r in rules):
        return False
    if any(admission.rule_matches(_rule(r), attrs) and _named(r, attrs) for r in constraints.get("excludeResourceRules") or []):
        return False
    return admission.selectors_match(constraints, attrs, ns_labels)


def _rule(rule: dict) -> dict:
    return {**rule, "scope": rule.get("scope", "*")}


def _named(rule: dict, attrs: admission.Attributes) -> bool:
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _evaluate(expression: str, variables: dict[str, Any]) -> Any:
    try:
        return admission.CEL.evaluate(admission._program(expression), variables)
    except Exception as e:  # MatchConditionError, and cel-python's own errors
        raise _Failed(f"expression '{expression}' resulted in error: {e}") from None


class AdmissionPolicies:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.enabled = True
        # (policy, binding, outcome) of every evaluation, for tests: "allowed", "denied", "skipped".
        self.decisions: list[tuple[str, str, str]] = []

    def _pairs(self) -> list[tuple[dict, dict]]:
        try:
            bindings, _ = self.store.list(BINDINGS)
            policies = {p["metadata"]["name"]: p for p in self.store.list(POLICIES)[0]}
        except ApiError:
            return []
        out = []
        for b in sorted(bindings, key=lambda b: b["metadata"]["name"]):
            policy = policies.get((b.get("spec") or {}).get("policyName", ""))
            if policy is not None:
                out.append((policy, b))
        return out

    def handles(self, attrs: admission.Attributes) -> bool:
        if not self.enabled:
            return False
        ns_labels = admission.namespace_labels(self.store, attrs.namespace)
        return any(_matches((p.get("spec") or {}).get("matchConstraints"), attrs, ns_labels)
                   and _matches((b.get("spec") or {}).get("matchResources"), attrs, ns_labels)
                   for p, b in self._pairs())

    def validate(self, attrs: admission.Attributes) -> list[str]:
        """Raises the denial; returns Warn-action warnings."""
        ns_labels = admission.namespace_labels(self.store, attrs.namespace)
        variables = {"object": attrs.obj, "oldObject": attrs.old, "request": admission.match_request(attrs)}
        warnings: list[str] = []
        for policy, binding in self._pairs():
            spec, bspec = policy.get("spec") or {}, binding.get("spec") or {}
            if not (_matches(spec.get("matchConstraints"), attrs, ns_labels)
                    and _matches(bspec.get("matchResources"), attrs, ns_labels)):
                continue
            pname, bname = policy["metadata"]["name"], binding["metadata"]["name"]
            fail_closed = spec.get("failurePolicy", "Fail") == "Fail"
            verdict = self._verdict(spec, variables, fail_closed)
            if verdict is None:
                self.decisions.append((pname, bname, "allowed"))
                continue
            message, reason = verdict
            actions = bspec.get("validationActions") or []
            if "Warn" in actions:
                warnings.append(f"Validation failed for ValidatingAdmissionPolicy '{pname}' with binding '{bname}': "
                                f"{message}")
            if "Deny" not in actions:
                self.decisions.append((pname, bname, "warned"))
                continue
            self.decisions.append((pname, bname, "denied"))
            rt = attrs.rt
            resource = f"{rt.key.plural}.{rt.key.group}" if rt.key.group else rt.key.plural
            text = f"ValidatingAdmissionPolicy '{pname}' with binding '{bname}' denied request: {message}"
            raise ApiError(_CODES.get(reason, 422), reason, f'{resource} "{attrs.name}" is forbidden: {text}',
                           {"name": attrs.name, "group": rt.key.group, "kind": rt.key.plural,
                            "causes": [{"message": text}]})
        return warnings

    @staticmethod
    def _verdict(spec: dict, variables: dict[str, Any], fail_closed: bool) -> tuple[str, str] | None:
        """None when the request passes; else (message, reason)."""
        for cond in spec.get("matchConditions") or []:
            try:
                if _evaluate(str(cond.get("expression", "")), variables) is False:
                    return None  # the policy does not apply
            except _Failed as e:
                if fail_closed:
                    return str(e), "Invalid"
                return None
        for v in spec.get("validations") or []:
            expression = str(v.get("expression", ""))
            try:
                result = _evaluate(expression, variables)
            except _Failed as e:
                if fail_closed:
                    return str(e), "Invalid"
                continue
            if result is not True:
                if result is not False and not fail_closed:
                    continue
                return str(v.get("message") or f"failed expression: {expression}"), str(v.get("reason") or "Invalid")
        return None
