"""Admission webhook dispatch of the emulated API server, as kube-apiserver does it.

Follows staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/ (generic/webhook.go
`ShouldCallHook`, predicates/rules/rules.go, mutating/dispatcher.go, pkg/util/webhook/):
- every MutatingWebhookConfiguration in name order, each webhook in list order;
- rules match group, version, operation and resource including subresources ("nodes" does not
  match "nodes/status"; "*" means every resource but no subresource; "*/status", "nodes/*",
  "*/*"), and scope; namespaceSelector (on the namespace's labels, or the object's own labels
  for a Namespace; cluster-scoped objects always pass) and objectSelector (object or oldObject);
- an AdmissionReview v1 is POSTed over HTTPS, the server certificate is verified against
  `caBundle` and the DNS name `<service>.<namespace>.svc`; `timeoutSeconds` bounds the call;
- call failures (connection, TLS, timeout, non-200, malformed or mismatching response) honour
  `failurePolicy` (Ignore: skip the webhook; Fail: 500 InternalError naming the webhook);
  `allowed: false` always rejects with the webhook's status; the JSONPatch is applied;
  `response.warnings` become `Warning` headers.
- a dryRun request to a webhook whose sideEffects is not None/NoneOnDryRun is rejected (400).
- ValidatingWebhookConfigurations (validating/dispatcher.go) run after mutation and after the
  object passed its schema and strategy (the API server calls them from inside the storage update,
  with the final object and the stored oldObject); every matching webhook is called (kube-apiserver
  calls them in parallel), the first denial in configuration order is the answer, failurePolicy as
  above (a patch in a validating webhook's answer is not looked at).
- `matchConditions` (plugin/webhook/matchconditions/matcher.go, generic/webhook.go
  `ShouldCallHook`): evaluated after the rules and selectors matched, with a real CEL
  implementation (cel-expr-python, cel-cpp's wrapper, when installed, else cel-python), over
  `object`, `oldObject` (null on CREATE, `object` null on DELETE) and `request` (the
  AdmissionRequest without its objects). Any condition false: the webhook is skipped, even if
  others failed to evaluate. Otherwise an evaluation error follows the webhook's failurePolicy:
  Ignore skips the webhook, Fail rejects the request (403 Forbidden, as kube-apiserver's
  `NewForbidden`). Every skip is recorded in `Dispatcher.skipped` and counted in
  `Dispatcher.counts` beside the requests admission saw and the calls it made. `authorizer` is
  not bound: an expression that uses it fails to evaluate (then failurePolicy applies). A
  malformed expression is not refused when the configuration is created (kube-apiserver compiles
  it then); it fails at evaluation. cel-python evaluates both sides of `&&`/`||` where cel-go
  short-circuits; the results agree, except that cel-python raises on `exists` over a null
  (treated here as an evaluation error).
Not emulated: `reinvocationPolicy: IfNeeded` (webhooks run once), `matchPolicy` (only the
storage version of each CRD is served, so Exact and Equivalent coincide). That leaves out one
real path: on Longhorn v1.7/v1.8, which still serve `nodes.longhorn.io` v1beta1 through a
conversion webhook, a write through v1beta1 would be converted to v1beta2 before a webhook
registered for v1beta2 with `matchPolicy: Equivalent` sees it. bimguard's webhook would see the
same v1beta2 object as here, and longhorn-manager writes node status only through v1beta2
(webhook/registration.py says why, with references), so serving v1beta1 would need Longhorn's
conversion (k8s/pkg/apis/longhorn/v1beta1/node.go:111-190 @v1.7.2) without exercising anything
the product depends on.

`webhook_hosts` maps "service.namespace.svc" (or "service.namespace.svc:port", or a
clientConfig.url host) to the local (host, port) that stands in for the Service; a missing
entry behaves like a name that does not resolve.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import celpy

from bimguard.sim.patch import PatchError, apply_json_patch
from bimguard.sim.resources import ResourceKey, ResourceType
from bimguard.sim.store import (
    ApiError,
    Store,
    bad_request,
    internal,
    label_selector_from_struct,
    labels_match,
)

MWC = ResourceKey("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
VWC = ResourceKey("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")
DEFAULT_USER: dict[str, Any] = {"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]}


@dataclass(frozen=True)
class Attributes:
    """admission.Attributes: what a request is about."""

    rt: ResourceType
    operation: str  # CREATE | UPDATE | DELETE
    namespace: str
    name: str
    obj: dict | None
    old: dict | None
    subresource: str = ""
    dry_run: bool = False
    user: dict = field(default_factory=lambda: dict(DEFAULT_USER))
    options: dict = field(default_factory=dict)


def request_key(attrs: Attributes) -> str:
    """How `Dispatcher.counts` names a kind of request: "longhorn.io/nodes/status UPDATE"."""
    key = attrs.rt.key
    resource = f"{key.group}/{key.plural}" if key.group else key.plural
    if attrs.subresource:
        resource += "/" + attrs.subresource
    return f"{resource} {attrs.operation}"


class WebhookCallError(Exception):
    """webhookutil.ErrCallingWebhook: the webhook could not be consulted (failurePolicy applies)."""


# --- matching (pure) ------------------------------------------------------------------------


def _resource_matches(patterns: list[str], resource: str, subresource: str) -> bool:
    for p in patterns:
        if p == "*/*":
            return True
        res, _, sub = p.partition("/")
        if res not in ("*", resource):
            continue
        if (sub or "") == subresource or (sub == "*" and subresource):
            return True
    return False


def rule_matches(rule: dict, attrs: Attributes) -> bool:
    ops = rule.get("operations") or []
    if "*" not in ops and attrs.operation not in ops:
        return False
    key = attrs.rt.key
    if not any(g in ("*", key.group) for g in rule.get("apiGroups") or []):
        return False
    if not any(v in ("*", key.version) for v in rule.get("apiVersions") or []):
        return False
    if not _resource_matches(rule.get("resources") or [], key.plural, attrs.subresource):
        return False
    scope = rule.get("scope", "*")
    if scope == "Cluster" and attrs.rt.namespaced:
        return False
    if scope == "Namespaced" and not attrs.rt.namespaced:
        return False
    return True


def namespace_labels(store: Store, namespace: str) -> dict[str, str] | None:
    """The labels a namespaceSelector is matched against: None for a cluster-scoped request, {} for
    a namespace the store does not hold."""
    if not namespace:
        return None
    try:
        return store.get("v1/namespaces", None, namespace)["metadata"].get("labels") or {}
    except ApiError:
        return {}


def selectors_match(hook: dict, attrs: Attributes, namespace_labels: dict[str, str] | None) -> bool:
    obj_sel = label_selector_from_struct(hook.get("objectSelector"))
    if obj_sel:
        labels = [(o.get("metadata") or {}).get("labels") for o in (attrs.obj, attrs.old) if o is not None]
        if not any(labels_match(obj_sel, lbl) for lbl in labels):
            return False
    ns_sel = label_selector_from_struct(hook.get("namespaceSelector"))
    if ns_sel:
        if attrs.rt.key == ResourceKey("", "v1", "namespaces"):
            obj = attrs.obj or attrs.old or {}
            return labels_match(ns_sel, (obj.get("metadata") or {}).get("labels"))
        if not attrs.rt.namespaced:
            return True  # "If the object is another cluster scoped resource, it never skips the webhook."
        return labels_match(ns_sel, namespace_labels)
    return True


def hook_matches(hook: dict, attrs: Attributes, namespace_labels: dict[str, str] | None) -> bool:
    return any(rule_matches(r, attrs) for r in hook.get("rules") or []) and selectors_match(hook, attrs, namespace_labels)


def build_review(attrs: Attributes, uid: str) -> dict:
    key, rt = attrs.rt.key, attrs.rt
    gvk = {"group": key.group, "version": key.version, "kind": rt.kind}
    gvr = {"group": key.group, "version": key.version, "resource": key.plural}
    kinds = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}
    request: dict[str, Any] = {
        "uid": uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": attrs.name,
        "operation": attrs.operation,
        "userInfo": attrs.user,
        "object": attrs.obj,
        "oldObject": attrs.old,
        "dryRun": attrs.dry_run,
        "options": {"kind": kinds.get(attrs.operation, "CreateOptions"), "apiVersion": "meta.k8s.io/v1", **attrs.options},
    }
    if attrs.subresource:
        request["subResource"] = attrs.subresource
        request["requestSubResource"] = attrs.subresource
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# --- matchConditions (pure but for the compile cache) ----------------------------------------


class MatchConditionError(Exception):
    """A matchCondition could not be compiled or evaluated."""


class _CelPython:
    """cel-python (celpy): pure Python, always installed. Slow (~3 ms per disk of a Node for
    bimguard's expression): its interpreter walks the parse tree and evaluates both sides of
    `&&`/`||` (the results agree with cel-go's short-circuit ones, errors absorbed the same way)."""

    name = "cel-python"

    def __init__(self) -> None:
        self._env = celpy.Environment()

    def compile(self, expression: str) -> Any:
        return self._env.program(self._env.compile(expression))

    def evaluate(self, program: Any, variables: dict[str, Any]) -> Any:
        result = program.evaluate({k: celpy.json_to_cel(v) for k, v in variables.items()})
        if isinstance(result, Exception):
            raise MatchConditionError(str(result))
        if isinstance(result, celpy.celtypes.BoolType):
            return bool(result)
        return result


class _CelCpp:
    """cel-expr-python: the Python wrapper of cel-cpp, Google's C++ CEL (microseconds per
    evaluation). Variables are declared `dyn`, as kube-apiserver declares `object`, `oldObject`
    and `request` for webhook matchConditions."""

    name = "cel-expr-python"

    def __init__(self) -> None:
        from cel_expr_python import cel

        self._cel = cel
        self._env = cel.NewEnv(variables={v: cel.Type.DYN for v in ("object", "oldObject", "request")})

    def compile(self, expression: str) -> Any:
        return self._env.compile(expression)

    def evaluate(self, program: Any, variables: dict[str, Any]) -> Any:
        value = program.eval(data=variables)
        if value.type() == self._cel.Type.ERROR:
            raise MatchConditionError(str(value.value()))
        return value.value()


def _engine(name: str | None = None) -> _CelPython | _CelCpp:
    """cel-expr-python when it is installed (the `test` extra), else cel-python;
    BIMGUARD_SIM_CEL=cel-python|cel-expr-python picks one."""
    name = name or os.environ.get("BIMGUARD_SIM_CEL", "")
    if name == "cel-python":
        return _CelPython()
    try:
        return _CelCpp()
    except ImportError:
        if name == "cel-expr-python":
            raise
        return _CelPython()


CEL = _engine()
_PROGRAMS: dict[tuple[str, str], Any] = {}


def use_cel(name: str) -> None:
    """Switch the CEL implementation (tests compare both)."""
    global CEL
    CEL = _engine(name)


def _program(expression: str) -> Any:
    """Compiled once per distinct expression and engine; a compile error is kept and raised at
    every evaluation (kube-apiserver refuses it when the configuration is written)."""
    key = (CEL.name, expression)
    prog = _PROGRAMS.get(key)
    if prog is None:
        try:
            prog = CEL.compile(expression)
        except Exception as e:  # a parse or type-check error, in either implementation
            prog = MatchConditionError(f"compilation failed: {e}")
        _PROGRAMS[key] = prog
    if isinstance(prog, Exception):
        raise prog
    return prog


def match_request(attrs: Attributes, uid: str = "") -> dict:
    """The `request` variable: the AdmissionRequest a webhook would get, without its objects
    (those are `object` and `oldObject`)."""
    request = dict(build_review(attrs, uid)["request"])
    request.pop("object", None)
    request.pop("oldObject", None)
    return request


def evaluate_match_conditions(conditions: list[dict], obj: dict | None, old: dict | None,
                              request: dict | None = None) -> tuple[bool, str, list[str]]:
    """matcher.go `Match` without the failure policy: (matches, the first false condition's name,
    evaluation errors). Any false condition means no match, whatever the errors; errors with no
    false condition are for the caller's failurePolicy."""
    if not conditions:
        return True, "", []
    variables = {"object": obj, "oldObject": old, "request": request or {}}
    errors: list[str] = []
    for cond in conditions:
        name, expression = str(cond.get("name", "")), str(cond.get("expression", ""))
        try:
            result = CEL.evaluate(_program(expression), variables)
        except Exception as e:  # MatchConditionError, and cel-python's own TypeErrors
            errors.append(f"expression '{expression}' resulted in error: {e}")
            continue
        if result is False:
            return False, name, []
        if result is not True:
            errors.append(f"expression '{expression}' resulted in error: expected a bool, got {type(result).__name__}")
    return (not errors), "", errors


def verify_response(body: Any, uid: str) -> dict:
    """webhookutil.VerifyAdmissionResponse for v1; returns `response`."""
    if not isinstance(body, dict):
        raise WebhookCallError("received invalid webhook response: response is not an object")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        raise WebhookCallError(
            "received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, "
            f"got {body.get('apiVersion', '')}, Kind={body.get('kind', '')}")
    response = body.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("received invalid webhook response: webhook response was absent")
    if response.get("uid") != uid:
        raise WebhookCallError(f'received invalid webhook response: expected response.uid="{uid}", got "{response.get("uid", "")}"')
    patch_type = response.get("patchType")
    if response.get("patch") and not patch_type:
        raise WebhookCallError("received invalid webhook response: webhook returned patch but not patchType")
    if patch_type and not response.get("patch"):
        raise WebhookCallError(f"received invalid webhook response: webhook returned patchType of {patch_type} but not patch")
    if patch_type and patch_type != "JSONPatch":
        raise WebhookCallError(f'received invalid webhook response: webhook returned invalid patchType: "{patch_type}"')
    return response


def rejection(hook_name: str, status: dict | None) -> ApiError:
    """webhookutil.ToStatusErr."""
    status = dict(status or {})
    code = int(status.get("code") or 0)
    code = max(code, 400)
    denied = f'admission webhook "{hook_name}" denied the request'
    if status.get("message"):
        message = f"{denied}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied}: {status['reason']}"
    else:
        message = f"{denied} without explanation"
    return ApiError(code, status.get("reason", ""), message, status.get("details"))


# --- dispatch (I/O) ------------------------------------------------------------------------


def _go_tls_message(exc: BaseException, hostname: str) -> str:
    # The real server is Go; say what crypto/tls + x509 would say, so messages read alike.
    text = str(exc)
    if "hostname" in text.lower() or "IP address mismatch" in text or getattr(exc, "verify_code", None) == 62:
        return f"tls: failed to verify certificate: x509: certificate is not valid for {hostname}"
    if getattr(exc, "verify_code", None) in (2, 18, 19, 20, 21) or "unable to get local issuer" in text or "self" in text:
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    return f"tls: {text}"


class Dispatcher:
    def __init__(self, store: Store, hosts: dict[str, tuple[str, int]]) -> None:
        self.store = store
        self.hosts = hosts  # shared with ApiServer.webhook_hosts: runtime changes apply at once
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.calls: list[tuple[str, str]] = []  # (webhook name, outcome) for tests and debugging
        # (webhook name, why) of every call matchConditions spared: "<condition> is false", or
        # "error (failurePolicy Ignore): ..."; calls rejected under Fail are in `calls`.
        self.skipped: list[tuple[str, str]] = []
        # For counting, by request_key() ("longhorn.io/nodes/status UPDATE"): "requests" every
        # request mutating admission saw; "sent <webhook>" calls made; "skipped <webhook>" calls
        # spared by matchConditions.
        self.counts: Counter[tuple[str, str]] = Counter()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl(self, ca_bundle: str | None) -> ssl.SSLContext:
        key = ca_bundle or ""
        ctx = self._contexts.get(key)
        if ctx is None:
            if ca_bundle:
                try:
                    pem = base64.b64decode(ca_bundle).decode()
                    ctx = ssl.create_default_context(cadata=pem)
                except (ValueError, ssl.SSLError) as e:
                    raise WebhookCallError(f"failed to call webhook: invalid caBundle: {e}") from None
            else:
                ctx = ssl.create_default_context()
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._contexts[key] = ctx
        return ctx

    def _target(self, client_config: dict, timeout: int) -> tuple[str, str, str, int]:
        """(URL as kube-apiserver shows it, URL actually dialled, TLS hostname, port)."""
        if client_config.get("service"):
            svc = client_config["service"]
            hostname = f"{svc['name']}.{svc['namespace']}.svc"
            port = int(svc.get("port") or 443)
            path = svc.get("path") or "/"
        elif client_config.get("url"):
            parts = urlsplit(client_config["url"])
            hostname, port = parts.hostname or "", parts.port or 443
            path = parts.path or "/"
        else:
            raise WebhookCallError("failed to call webhook: neither service nor url is set in clientConfig")
        shown = f"https://{hostname}:{port}{path}?timeout={timeout}s"
        local = self.hosts.get(f"{hostname}:{port}") or self.hosts.get(hostname)
        if local is None:
            if client_config.get("service"):
                raise WebhookCallError(
                    f'failed to call webhook: Post "{shown}": dial tcp: lookup {hostname}: no such host')
            local = (hostname, port)
        return shown, f"https://{local[0]}:{local[1]}{path}?timeout={timeout}s", hostname, port

    async def _call(self, hook: dict, review: dict) -> dict:
        timeout = min(int(hook.get("timeoutSeconds") or 10), 30)
        cc = hook.get("clientConfig") or {}
        shown, dial, hostname, port = self._target(cc, timeout)
        ctx = self._ssl(cc.get("caBundle"))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                dial, data=json.dumps(review), ssl=ctx, server_hostname=hostname,
                headers={"Content-Type": "application/json", "Accept": "application/json", "Host": f"{hostname}:{port}"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise WebhookCallError(
                        f'failed to call webhook: an error on the server ("{text[:200]}") has prevented the request from succeeding')
                try:
                    return json.loads(text)
                except ValueError:
                    raise WebhookCallError("received invalid webhook response: invalid JSON") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise WebhookCallError(f'failed to call webhook: Post "{shown}": context deadline exceeded') from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise WebhookCallError(f'failed to call webhook: Post "{shown}": {_go_tls_message(e.certificate_error, hostname)}') from None
        except aiohttp.ClientSSLError as e:
            raise WebhookCallError(f'failed to call webhook: Post "{shown}": {_go_tls_message(e, hostname)}') from None
        except aiohttp.ClientConnectorError:
            raise WebhookCallError(f'failed to call webhook: Post "{shown}": dial tcp {hostname}:{port}: connect: connection refused') from None
        except aiohttp.ClientError as e:
            raise WebhookCallError(f'failed to call webhook: Post "{shown}": {e}') from None

    def _configs(self, key: ResourceKey = MWC) -> list[dict]:
        items, _ = self.store.list(key)
        return sorted(items, key=lambda c: c["metadata"]["name"])

    def _matching(self, key: ResourceKey, attrs: Attributes, ns_labels: dict[str, str] | None) -> list[dict]:
        return [hook for config in self._configs(key) for hook in config.get("webhooks") or []
                if hook_matches(hook, attrs, ns_labels)]

    def _conditions_allow(self, hook: dict, attrs: Attributes) -> bool:
        """generic/webhook.go ShouldCallHook's last step: False when matchConditions skip the
        webhook; a Forbidden error when they cannot be evaluated and failurePolicy is Fail."""
        conditions = hook.get("matchConditions") or []
        if not conditions:
            return True
        name = hook.get("name", "")
        matches, false_condition, errors = evaluate_match_conditions(conditions, attrs.obj, attrs.old,
                                                                     match_request(attrs))
        if matches:
            return True
        key = request_key(attrs)
        if not errors:
            self.skipped.append((name, f"{false_condition} is false"))
            self.counts[(key, f"skipped {name}")] += 1
            return False
        message = "; ".join(errors)
        if hook.get("failurePolicy", "Fail") == "Ignore":
            self.skipped.append((name, f"error (failurePolicy Ignore): {message}"))
            self.counts[(key, f"skipped {name}")] += 1
            return False
        self.calls.append((name, f"failed: matchConditions: {message}"))
        rt = attrs.rt
        resource = f"{rt.key.plural}.{rt.key.group}" if rt.key.group else rt.key.plural
        raise ApiError(403, "Forbidden", f'{resource} "{attrs.name}" is forbidden: {message}',
                       {"name": attrs.name, "group": rt.key.group, "kind": rt.key.plural})

    async def _consult(self, hook: dict, attrs: Attributes) -> dict | None:
        """One webhook call: its verified response, or None when failurePolicy Ignore swallowed a
        call failure; a denial is raised."""
        name = hook.get("name", "")
        if attrs.dry_run and hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
            raise bad_request(f'admission webhook "{name}" does not support dry run')
        uid = str(uuid.uuid4())
        self.counts[(request_key(attrs), f"sent {name}")] += 1
        try:
            response = verify_response(await self._call(hook, build_review(attrs, uid)), uid)
        except WebhookCallError as e:
            message = f'failed calling webhook "{name}": {e}'
            if hook.get("failurePolicy", "Fail") == "Ignore":
                self.calls.append((name, f"ignored: {message}"))
                return None
            self.calls.append((name, f"failed: {message}"))
            raise internal(message) from None
        if not response.get("allowed"):
            self.calls.append((name, "denied"))
            raise rejection(name, response.get("status"))
        return response

    async def admit(self, attrs: Attributes) -> tuple[dict | None, list[str]]:
        """Run all matching mutating webhooks; returns (possibly patched object, warnings)."""
        warnings: list[str] = []
        obj = attrs.obj
        ns_labels = namespace_labels(self.store, attrs.namespace)
        self.counts[(request_key(attrs), "requests")] += 1
        for config in self._configs():
            for hook in config.get("webhooks") or []:
                current = Attributes(attrs.rt, attrs.operation, attrs.namespace, attrs.name, obj, attrs.old,
                                     attrs.subresource, attrs.dry_run, attrs.user, attrs.options)
                if not hook_matches(hook, current, ns_labels) or not self._conditions_allow(hook, current):
                    continue
                name = hook.get("name", "")
                response = await self._consult(hook, current)
                if response is None:
                    continue
                warnings.extend(str(w) for w in response.get("warnings") or [])
                if response.get("patch") and obj is not None and attrs.operation != "DELETE":
                    try:
                        ops = json.loads(base64.b64decode(response["patch"]))
                        obj = apply_json_patch(obj, ops)
                    except (ValueError, PatchError) as e:
                        self.calls.append((name, f"bad patch: {e}"))
                        raise internal(str(e)) from None
                    self.calls.append((name, "patched"))
                else:
                    self.calls.append((name, "allowed"))
        return obj, warnings

    def validates(self, attrs: Attributes) -> bool:
        """Whether any validating webhook matches (callers skip the extra storage pass if not)."""
        return bool(self._matching(VWC, attrs, namespace_labels(self.store, attrs.namespace)))

    async def validate(self, attrs: Attributes) -> list[str]:
        """Run all matching validating webhooks concurrently (validating/dispatcher.go); the first
        denial or Fail-policy error in configuration order is raised. Returns the warnings."""
        hooks = [h for h in self._matching(VWC, attrs, namespace_labels(self.store, attrs.namespace))
                 if self._conditions_allow(h, attrs)]
        results = await asyncio.gather(*(self._consult(h, attrs) for h in hooks), return_exceptions=True)
        warnings: list[str] = []
        for hook, result in zip(hooks, results):
            if isinstance(result, BaseException):
                raise result
            if result is None:
                continue
            self.calls.append((hook.get("name", ""), "allowed"))
            warnings.extend(str(w) for w in result.get("warnings") or [])
        return warnings
