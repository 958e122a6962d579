"""Pod Security admission (the `PodSecurity` plugin) of the emulated API server.

Re-described from k8s.io/pod-security-admission at **v0.32.0** (the library kube-apiserver v1.32,
which the emulator reports, is built with) and kube-apiserver's in-tree wrapper
`plugin/pkg/admission/security/podsecurity/admission.go` (kubernetes/kubernetes). No code copied.

Where it runs: PodSecurity is a *validating* admission plugin. kube-apiserver runs every mutating
plugin first (MutatingAdmissionWebhook included), then the validating ones in the order of
`pkg/kubeapiserver/options/plugins.go` AllOrderedPlugins, where PodSecurity comes before
ValidatingAdmissionWebhook; validating admission is called from inside the registry's Create/Update
(`rest.AdmissionToValidateObjectFunc`), after the strategy prepared and validated the object. The
API server calls `PodSecurity.validate` there, just before the validating webhooks, for CREATE and
UPDATE (the plugin's handler takes no other operation), dry runs included.

What it checks (`admission/admission.go` Validate):
- **pods** (not the subresources exec/attach/binding/eviction/log/portforward/proxy/status): the
  namespace's policy from its labels `pod-security.kubernetes.io/{enforce,audit,warn}[-version]`
  (`api/helpers.go` PolicyToEvaluate: a missing label takes the default, privileged:latest; warn
  follows an explicitly set, stricter enforce level; a bad level reads as restricted for enforce
  and privileged for audit/warn, a bad version as latest). A fully privileged namespace is not
  looked at. An UPDATE is only evaluated when it changes a container image or adds a container
  (isSignificantPodUpdate). Enforce failure: 403 `pods "NAME" is forbidden: violates PodSecurity
  "LEVEL:VERSION": DETAIL` (`admission/response.go` forbiddenResponse = apierrors.NewForbidden;
  the wrapper copies its message, reason, details and code). Otherwise a warn violation becomes a
  `Warning` header `would violate PodSecurity "LEVEL:VERSION": DETAIL`.
- **pod controllers** (deployments, replicasets, statefulsets, daemonsets, jobs, cronjobs,
  replicationcontrollers, podtemplates; whichever the server serves): the pod template, warn only.
- **namespaces**: invalid PodSecurity labels are a 422 (`Namespace "x" is invalid:
  metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "foo": must be one of
  privileged, baseline, restricted`; on UPDATE only when the errors changed); an UPDATE that
  tightens `enforce` returns warnings naming the existing pods that violate it
  (EvaluatePodsInNamespace: at most 3000 pods, one per controller first).

DETAIL is `AggregateCheckResult.ForbiddenDetail` (`policy/checks.go`): `reason (detail), reason
(detail), ...` over the failed checks, in the evaluator's order (`policy/registry.go` populate:
baseline check IDs sorted, then restricted ones sorted; a restricted check overrides the baseline
check it replaces: capabilities_restricted -> capabilities_baseline, restrictedVolumes ->
hostPathVolumes, seccompProfile_restricted -> seccompProfile_baseline). Every check of v0.32.0 is
here with every version step (`policy/check_*.go`), so `*-version` labels (`v1.0` ... `v1.32`,
later versions and `latest` = v1.32) select the checks and messages of that version:

  baseline:   appArmorProfile, capabilities_baseline, hostNamespaces, hostPathVolumes, hostPorts,
              privileged, procMount, seLinuxOptions, seccompProfile_baseline, sysctls,
              windowsHostProcess
  restricted: allowPrivilegeEscalation, capabilities_restricted, restrictedVolumes, runAsNonRoot,
              runAsUser, seccompProfile_restricted

Containers are visited init containers first, then containers, then ephemeral containers
(`policy/visitor.go`). The emulator has no PodSecurityConfiguration file: `PodSecurity.defaults`
and `PodSecurity.exemptions` (usernames, namespaces, runtimeClasses) stand in for it (defaults
privileged:latest, no exemptions, as kube-apiserver without `--admission-control-config-file`).

Not emulated: audit mode (there is no audit log: `audit` labels are parsed and validated, never
evaluated), audit annotations, metrics; the 1 s time budget of EvaluatePodsInNamespace; the
UserNamespacesPodSecurityStandards feature gate (alpha in 1.32, off: `hostUsers: false` relaxes
nothing); the pod strategy's AppArmor annotation/field synchronisation (kube-apiserver copies
`container.apparmor.security.beta.kubernetes.io/*` annotations into `appArmorProfile` fields before
admission, so a real message also names the container); no controller turns a Deployment or Job
into pods here, so only direct pod writes are enforced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bimguard.sim.schema import FieldError
from bimguard.sim.store import ApiError, Store, internal, invalid

PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)

LABEL_PREFIX = "pod-security.kubernetes.io/"
ENFORCE_LABEL, ENFORCE_VERSION_LABEL = LABEL_PREFIX + "enforce", LABEL_PREFIX + "enforce-version"
AUDIT_LABEL, AUDIT_VERSION_LABEL = LABEL_PREFIX + "audit", LABEL_PREFIX + "audit-version"
WARN_LABEL, WARN_VERSION_LABEL = LABEL_PREFIX + "warn", LABEL_PREFIX + "warn-version"

Version = tuple[int, int]  # (major, minor); None stands for "latest"

NAMESPACE_MAX_PODS_TO_CHECK = 3000  # admission.go defaultNamespaceMaxPodsToCheck

# admission.go ignoredPodSubresources
IGNORED_POD_SUBRESOURCES = frozenset({"exec", "attach", "binding", "eviction", "log", "portforward", "proxy", "status"})

# admission.go defaultPodSpecResources (minus pods): group/resource -> path to the pod template.
POD_CONTROLLERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "replicationcontrollers"): ("spec", "template"),
    ("", "podtemplates"): ("template",),
    ("apps", "replicasets"): ("spec", "template"),
    ("apps", "deployments"): ("spec", "template"),
    ("apps", "statefulsets"): ("spec", "template"),
    ("apps", "daemonsets"): ("spec", "template"),
    ("batch", "jobs"): ("spec", "template"),
    ("batch", "cronjobs"): ("spec", "jobTemplate", "spec", "template"),
}
# Kinds whose template is a pointer (`*PodTemplateSpec`): nil means "no pod spec", skipped.
_POINTER_TEMPLATES = {("", "replicationcontrollers")}


# --- levels, versions, policies (api/helpers.go) -------------------------------------------


@dataclass(frozen=True)
class LevelVersion:
    level: str
    version: Version | None = None  # None = latest

    def __str__(self) -> str:
        return f"{self.level}:{version_string(self.version)}"


def version_string(version: Version | None) -> str:
    return "latest" if version is None else f"v{version[0]}.{version[1]}"


@dataclass(frozen=True)
class Policy:
    enforce: LevelVersion = LevelVersion(PRIVILEGED)
    audit: LevelVersion = LevelVersion(PRIVILEGED)
    warn: LevelVersion = LevelVersion(PRIVILEGED)

    def fully_privileged(self) -> bool:
        return self.enforce.level == self.audit.level == self.warn.level == PRIVILEGED

    def equivalent(self, other: Policy) -> bool:
        return all(_equivalent(a, b) for a, b in ((self.enforce, other.enforce), (self.audit, other.audit),
                                                  (self.warn, other.warn)))

    @classmethod
    def from_config(cls, enforce: str = PRIVILEGED, enforce_version: str = "latest", audit: str = PRIVILEGED,
                    audit_version: str = "latest", warn: str = PRIVILEGED, warn_version: str = "latest") -> Policy:
        """The `defaults` stanza of a PodSecurityConfiguration (admission/api ToPolicy)."""
        def lv(level: str, version: str) -> LevelVersion:
            parsed_level, err = parse_level(level)
            parsed_version, err2 = parse_version(version)
            if err or err2:
                raise ValueError(err or err2)
            return LevelVersion(parsed_level, parsed_version)
        return cls(lv(enforce, enforce_version), lv(audit, audit_version), lv(warn, warn_version))


def _equivalent(a: LevelVersion, b: LevelVersion) -> bool:
    return (a.level == PRIVILEGED and b.level == PRIVILEGED) or a == b


def parse_level(level: str) -> tuple[str, str]:
    """(level, error): an unknown level reads as restricted."""
    if level in LEVELS:
        return level, ""
    return RESTRICTED, "must be one of " + ", ".join(LEVELS)


_VERSION = re.compile(r"^v1\.([0-9]|[1-9][0-9]*)$")


def parse_version(version: str) -> tuple[Version | None, str]:
    """(version, error): "latest" or "v1.x"; anything else reads as latest."""
    if version == "latest":
        return None, ""
    m = _VERSION.match(version)
    if not m:
        return None, 'must be "latest" or "v1.x"'
    return (1, int(m.group(1))), ""


def compare_levels(a: str, b: str) -> int:
    order = {PRIVILEGED: 0, BASELINE: 1, RESTRICTED: 2}
    if a == b:
        return 0
    return 1 if order.get(a, -1) > order.get(b, -1) else -1


def policy_to_evaluate(labels: Mapping[str, str] | None, defaults: Policy = Policy()) -> tuple[Policy, list[FieldError]]:
    """PolicyToEvaluate: the namespace's policy and the label errors (field path, value, detail)."""
    errors: list[FieldError] = []
    if not labels:
        return defaults, errors
    enforce, audit, warn = defaults.enforce, defaults.audit, defaults.warn

    def err(label: str, value: str, detail: str) -> None:
        if detail:
            errors.append(FieldError("FieldValueInvalid", f"metadata.labels[{label}]", detail, value))

    has_enforce_level = has_warn_level = has_warn_version = False
    if ENFORCE_LABEL in labels:
        level, e = parse_level(labels[ENFORCE_LABEL])
        enforce = LevelVersion(level, enforce.version)
        has_enforce_level = not e
        err(ENFORCE_LABEL, labels[ENFORCE_LABEL], e)
    if ENFORCE_VERSION_LABEL in labels:
        version, e = parse_version(labels[ENFORCE_VERSION_LABEL])
        enforce = LevelVersion(enforce.level, version)
        err(ENFORCE_VERSION_LABEL, labels[ENFORCE_VERSION_LABEL], e)
    if AUDIT_LABEL in labels:
        level, e = parse_level(labels[AUDIT_LABEL])
        audit = LevelVersion(PRIVILEGED if e else level, audit.version)  # fail open for audit
        err(AUDIT_LABEL, labels[AUDIT_LABEL], e)
    if AUDIT_VERSION_LABEL in labels:
        version, e = parse_version(labels[AUDIT_VERSION_LABEL])
        audit = LevelVersion(audit.level, version)
        err(AUDIT_VERSION_LABEL, labels[AUDIT_VERSION_LABEL], e)
    if WARN_LABEL in labels:
        has_warn_level = True
        level, e = parse_level(labels[WARN_LABEL])
        warn = LevelVersion(PRIVILEGED if e else level, warn.version)  # fail open for warn
        err(WARN_LABEL, labels[WARN_LABEL], e)
    if WARN_VERSION_LABEL in labels:
        has_warn_version = True
        version, e = parse_version(labels[WARN_VERSION_LABEL])
        warn = LevelVersion(warn.level, version)
        err(WARN_VERSION_LABEL, labels[WARN_VERSION_LABEL], e)
    # Default warn to the enforce level when explicitly set to a more restrictive level.
    if not has_warn_level and has_enforce_level and compare_levels(enforce.level, warn.level) > 0:
        warn = LevelVersion(enforce.level, warn.version if has_warn_version else enforce.version)
    return Policy(enforce, audit, warn), errors


# --- check results (policy/checks.go) -------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    reason: str = ""
    detail: str = ""


ALLOWED = CheckResult(True)


@dataclass(frozen=True)
class AggregateResult:
    allowed: bool
    reasons: tuple[str, ...] = ()
    details: tuple[str, ...] = ()

    def forbidden_reason(self) -> str:
        return ", ".join(self.reasons)

    def forbidden_detail(self) -> str:
        return ", ".join(f"{r} ({d})" if d else r for r, d in zip(self.reasons, self.details))


def aggregate(results: Iterable[CheckResult]) -> AggregateResult:
    reasons, details = [], []
    for r in results:
        if not r.allowed:
            reasons.append(r.reason or "unknown forbidden reason")
            details.append(r.detail)
    return AggregateResult(not reasons, tuple(reasons), tuple(details))


# --- helpers (policy/helpers.go, visitor.go) ------------------------------------------------


def _go_quote(s: str) -> str:
    """Go's %q (strconv.Quote) for the strings annotations hold."""
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _join_quote(items: Iterable[str]) -> str:
    items = list(items)
    return '"' + '", "'.join(items) + '"' if items else ""


def _pluralize(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _obj(value: Any) -> dict | None:
    """A pointer-to-struct field: present and not null (a non-object counts as absent)."""
    return value if isinstance(value, dict) else None


def _containers(spec: Mapping[str, Any]) -> list[dict]:
    out: list[dict] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        out.extend(c for c in spec.get(key) or [] if isinstance(c, dict))
    return out


def _sc(container: Mapping[str, Any]) -> dict | None:
    return _obj(container.get("securityContext"))


def _pod_sc(spec: Mapping[str, Any]) -> dict | None:
    return _obj(spec.get("securityContext"))


def _name(container: Mapping[str, Any]) -> str:
    return str(container.get("name") or "")


def _windows(spec: Mapping[str, Any]) -> bool:
    os_ = _obj(spec.get("os"))
    return os_ is not None and os_.get("name") == "windows"


def _setters(pod: bool, containers: list[str]) -> list[str]:
    out = ["pod"] if pod else []
    if containers:
        out.append(f"{_pluralize('container', 'containers', len(containers))} {_join_quote(containers)}")
    return out


Meta = Mapping[str, Any]
Spec = Mapping[str, Any]
CheckFn = Callable[[Meta, Spec], CheckResult]


# --- the checks (policy/check_*.go at v0.32.0) ----------------------------------------------


def _allow_privilege_escalation_1_8(meta: Meta, spec: Spec) -> CheckResult:
    bad = []
    for c in _containers(spec):
        sc = _sc(c)
        if sc is None or sc.get("allowPrivilegeEscalation") is None or sc.get("allowPrivilegeEscalation") is True:
            bad.append(_name(c))
    if bad:
        return CheckResult(False, "allowPrivilegeEscalation != false",
                           f"{_pluralize('container', 'containers', len(bad))} {_join_quote(bad)} "
                           "must set securityContext.allowPrivilegeEscalation=false")
    return ALLOWED


def _allow_privilege_escalation_1_25(meta: Meta, spec: Spec) -> CheckResult:
    return ALLOWED if _windows(spec) else _allow_privilege_escalation_1_8(meta, spec)


_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def _app_armor_profile_1_0(meta: Meta, spec: Spec) -> CheckResult:
    def bad_type(profile: Any) -> str | None:
        p = _obj(profile)
        if p is None:
            return None
        t = str(p.get("type") or "")
        return None if t in ("RuntimeDefault", "Localhost") else t

    bad_values: set[str] = set()
    pod_bad = False
    psc = _pod_sc(spec)
    if psc is not None and (t := bad_type(psc.get("appArmorProfile"))) is not None:
        pod_bad = True
        bad_values.add(t)
    bad_containers = []
    for c in _containers(spec):
        sc = _sc(c)
        if sc is not None and (t := bad_type(sc.get("appArmorProfile"))) is not None:
            bad_containers.append(_name(c))
            bad_values.add(t)
    setters = _setters(pod_bad, bad_containers)
    forbidden_annotations = sorted(
        f"{k}={_go_quote(str(v))}" for k, v in (meta.get("annotations") or {}).items()
        if k.startswith(_APPARMOR_ANNOTATION_PREFIX)
        and not (v == "" or v == "runtime/default" or str(v).startswith("localhost/")))
    values = sorted(bad_values) + forbidden_annotations
    if forbidden_annotations:
        setters.append(_pluralize("annotation", "annotations", len(forbidden_annotations)))
    if setters:
        return CheckResult(False, _pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", len(values)),
                           f"{' and '.join(setters)} must not set AppArmor profile type to {_join_quote(values)}")
    return ALLOWED


_CAPABILITIES_ALLOWED_1_0 = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def _capabilities_baseline_1_0(meta: Meta, spec: Spec) -> CheckResult:
    bad, caps = [], set()
    for c in _containers(spec):
        sc = _sc(c)
        capabilities = _obj(sc.get("capabilities")) if sc is not None else None
        if capabilities is None:
            continue
        added = [str(a) for a in capabilities.get("add") or [] if str(a) not in _CAPABILITIES_ALLOWED_1_0]
        if added:
            bad.append(_name(c))
            caps.update(added)
    if bad:
        return CheckResult(False, "non-default capabilities",
                           f"{_pluralize('container', 'containers', len(bad))} {_join_quote(bad)} "
                           f"must not include {_join_quote(sorted(caps))} in securityContext.capabilities.add")
    return ALLOWED


def _capabilities_restricted_1_22(meta: Meta, spec: Spec) -> CheckResult:
    missing_drop_all, adding, caps = [], [], set()
    for c in _containers(spec):
        sc = _sc(c)
        capabilities = _obj(sc.get("capabilities")) if sc is not None else None
        if capabilities is None:
            missing_drop_all.append(_name(c))
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing_drop_all.append(_name(c))
        added = [str(a) for a in capabilities.get("add") or [] if a != "NET_BIND_SERVICE"]
        if added:
            adding.append(_name(c))
            caps.update(added)
    details = []
    if missing_drop_all:
        details.append(f"{_pluralize('container', 'containers', len(missing_drop_all))} {_join_quote(missing_drop_all)} "
                       'must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_pluralize('container', 'containers', len(adding))} {_join_quote(adding)} "
                       f"must not include {_join_quote(sorted(caps))} in securityContext.capabilities.add")
    if details:
        return CheckResult(False, "unrestricted capabilities", "; ".join(details))
    return ALLOWED


def _capabilities_restricted_1_25(meta: Meta, spec: Spec) -> CheckResult:
    return ALLOWED if _windows(spec) else _capabilities_restricted_1_22(meta, spec)


def _host_namespaces_1_0(meta: Meta, spec: Spec) -> CheckResult:
    used = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True]
    if used:
        return CheckResult(False, "host namespaces", ", ".join(used))
    return ALLOWED


def _host_path_volumes_1_0(meta: Meta, spec: Spec) -> CheckResult:
    names = [str(v.get("name") or "") for v in spec.get("volumes") or []
             if isinstance(v, dict) and v.get("hostPath") is not None]
    if names:
        return CheckResult(False, "hostPath volumes", f"{_pluralize('volume', 'volumes', len(names))} {_join_quote(names)}")
    return ALLOWED


def _host_ports_1_0(meta: Meta, spec: Spec) -> CheckResult:
    bad, ports = [], set()
    for c in _containers(spec):
        used = [p.get("hostPort") for p in c.get("ports") or [] if isinstance(p, dict) and p.get("hostPort") not in (None, 0)]
        if used:
            bad.append(_name(c))
            ports.update(str(p) for p in used)
    if bad:
        return CheckResult(False, "hostPort",
                           f"{_pluralize('container', 'containers', len(bad))} {_join_quote(bad)} "
                           f"{_pluralize('uses', 'use', len(bad))} {_pluralize('hostPort', 'hostPorts', len(ports))} "
                           f"{', '.join(sorted(ports))}")
    return ALLOWED


def _privileged_1_0(meta: Meta, spec: Spec) -> CheckResult:
    bad = [_name(c) for c in _containers(spec) if (sc := _sc(c)) is not None and sc.get("privileged") is True]
    if bad:
        return CheckResult(False, "privileged", f"{_pluralize('container', 'containers', len(bad))} {_join_quote(bad)} "
                                                "must not set securityContext.privileged=true")
    return ALLOWED


def _proc_mount_1_0(meta: Meta, spec: Spec) -> CheckResult:
    bad, types = [], set()
    for c in _containers(spec):
        sc = _sc(c)
        if sc is None or sc.get("procMount") is None:
            continue
        if sc["procMount"] != "Default":
            bad.append(_name(c))
            types.add(str(sc["procMount"]))
    if bad:
        return CheckResult(False, "procMount", f"{_pluralize('container', 'containers', len(bad))} {_join_quote(bad)} "
                                               f"must not set securityContext.procMount to {_join_quote(sorted(types))}")
    return ALLOWED


_ALLOWED_VOLUME_SOURCES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret")
_RESTRICTED_VOLUME_SOURCES = ("hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi",
                              "glusterfs", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile",
                              "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "portworxVolume",
                              "scaleIO", "storageos")


def _restricted_volumes_1_0(meta: Meta, spec: Spec) -> CheckResult:
    bad, types = [], set()
    for v in spec.get("volumes") or []:
        if not isinstance(v, dict) or any(v.get(k) is not None for k in _ALLOWED_VOLUME_SOURCES):
            continue
        bad.append(str(v.get("name") or ""))
        types.add(next((k for k in _RESTRICTED_VOLUME_SOURCES if v.get(k) is not None), "unknown"))
    if bad:
        return CheckResult(False, "restricted volume types",
                           f"{_pluralize('volume', 'volumes', len(bad))} {_join_quote(bad)} "
                           f"{_pluralize('uses', 'use', len(bad))} "
                           f"{_pluralize('restricted volume type', 'restricted volume types', len(types))} "
                           f"{_join_quote(sorted(types))}")
    return ALLOWED


def _run_as_non_root_1_0(meta: Meta, spec: Spec) -> CheckResult:
    pod_bad = pod_non_root = False
    psc = _pod_sc(spec)
    if psc is not None and psc.get("runAsNonRoot") is not None:
        if psc["runAsNonRoot"] is not True:
            pod_bad = True
        else:
            pod_non_root = True
    explicit, implicit = [], []
    for c in _containers(spec):
        sc = _sc(c)
        if sc is not None and sc.get("runAsNonRoot") is not None:
            if sc["runAsNonRoot"] is not True:
                explicit.append(_name(c))
        elif not pod_non_root:
            implicit.append(_name(c))
    setters = _setters(pod_bad, explicit)
    if setters:
        return CheckResult(False, "runAsNonRoot != true",
                           f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        return CheckResult(False, "runAsNonRoot != true",
                           f"pod or {_pluralize('container', 'containers', len(implicit))} {_join_quote(implicit)} "
                           "must set securityContext.runAsNonRoot=true")
    return ALLOWED


def _is_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _run_as_user_1_23(meta: Meta, spec: Spec) -> CheckResult:
    psc = _pod_sc(spec)
    pod_bad = psc is not None and _is_zero(psc.get("runAsUser"))
    explicit = [_name(c) for c in _containers(spec) if (sc := _sc(c)) is not None and _is_zero(sc.get("runAsUser"))]
    setters = _setters(pod_bad, explicit)
    if setters:
        return CheckResult(False, "runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0")
    return ALLOWED


_SELINUX_TYPES_1_0 = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_SELINUX_TYPES_1_31 = _SELINUX_TYPES_1_0 | {"container_engine_t"}


def _se_linux_options(allowed_types: frozenset[str]) -> CheckFn:
    def check(meta: Meta, spec: Spec) -> CheckResult:
        bad_types: set[str] = set()
        flags = {"user": False, "role": False}

        def valid(opts: dict) -> bool:
            ok = True
            t = str(opts.get("type") or "")
            if t not in allowed_types:
                ok = False
                bad_types.add(t)
            for key in ("user", "role"):
                if opts.get(key):
                    ok = False
                    flags[key] = True
            return ok

        psc = _pod_sc(spec)
        pod_bad = psc is not None and (o := _obj(psc.get("seLinuxOptions"))) is not None and not valid(o)
        bad = [_name(c) for c in _containers(spec)
               if (sc := _sc(c)) is not None and (o := _obj(sc.get("seLinuxOptions"))) is not None and not valid(o)]
        setters = _setters(pod_bad, bad)
        if not setters:
            return ALLOWED
        data = []
        if bad_types:
            data.append(f"{_pluralize('type', 'types', len(bad_types))} {_join_quote(sorted(bad_types))}")
        if flags["user"]:
            data.append("user may not be set")
        if flags["role"]:
            data.append("role may not be set")
        return CheckResult(False, "seLinuxOptions",
                           f"{' and '.join(setters)} set forbidden securityContext.seLinuxOptions: {'; '.join(data)}")
    return check


_SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
_SECCOMP_CONTAINER_ANNOTATION_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"


def _seccomp_profile_baseline_1_0(meta: Meta, spec: Spec) -> CheckResult:
    annotations = meta.get("annotations") or {}

    def valid(v: Any) -> bool:
        return v in ("runtime/default", "docker/default") or str(v).startswith("localhost/")

    forbidden: set[str] = set()
    if _SECCOMP_POD_ANNOTATION in annotations and not valid(annotations[_SECCOMP_POD_ANNOTATION]):
        forbidden.add(f"{_SECCOMP_POD_ANNOTATION}={_go_quote(str(annotations[_SECCOMP_POD_ANNOTATION]))}")
    for c in _containers(spec):
        key = _SECCOMP_CONTAINER_ANNOTATION_PREFIX + _name(c)
        if key in annotations and not valid(annotations[key]):
            forbidden.add(f"{key}={_go_quote(str(annotations[key]))}")
    if forbidden:
        return CheckResult(False, "seccompProfile", f"forbidden {_pluralize('annotation', 'annotations', len(forbidden))} "
                                                    f"{', '.join(sorted(forbidden))}")
    return ALLOWED


def _seccomp_type(profile: Any) -> str | None:
    """The type of a set seccompProfile, or None when the profile is not set."""
    p = _obj(profile)
    return None if p is None else str(p.get("type") or "")


def _valid_seccomp(t: str) -> bool:
    return t in ("Localhost", "RuntimeDefault")


def _seccomp_profile(restricted: bool) -> CheckFn:
    def check(meta: Meta, spec: Spec) -> CheckResult:
        bad_values: set[str] = set()
        pod_bad = pod_set = False
        psc = _pod_sc(spec)
        if psc is not None and (t := _seccomp_type(psc.get("seccompProfile"))) is not None:
            if not _valid_seccomp(t):
                pod_bad = True
                bad_values.add(t)
            else:
                pod_set = True
        explicit, implicit = [], []
        for c in _containers(spec):
            sc = _sc(c)
            t = _seccomp_type(sc.get("seccompProfile")) if sc is not None else None
            if t is not None:
                if not _valid_seccomp(t):
                    explicit.append(_name(c))
                    bad_values.add(t)
            elif not pod_set:
                implicit.append(_name(c))
        setters = _setters(pod_bad, explicit)
        if setters:
            return CheckResult(False, "seccompProfile", f"{' and '.join(setters)} must not set "
                                                        f"securityContext.seccompProfile.type to {_join_quote(sorted(bad_values))}")
        if restricted and implicit:
            return CheckResult(False, "seccompProfile",
                               f"pod or {_pluralize('container', 'containers', len(implicit))} {_join_quote(implicit)} "
                               'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"')
        return ALLOWED
    return check


_seccomp_profile_baseline_1_19 = _seccomp_profile(restricted=False)
_seccomp_profile_restricted_1_19 = _seccomp_profile(restricted=True)


def _seccomp_profile_restricted_1_25(meta: Meta, spec: Spec) -> CheckResult:
    return ALLOWED if _windows(spec) else _seccomp_profile_restricted_1_19(meta, spec)


_SYSCTLS_1_0 = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
                          "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start"})
_SYSCTLS_1_27 = _SYSCTLS_1_0 | {"net.ipv4.ip_local_reserved_ports"}
_SYSCTLS_1_29 = _SYSCTLS_1_27 | {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                                 "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
_SYSCTLS_1_32 = _SYSCTLS_1_29 | {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}


def _sysctls(allowed: frozenset[str]) -> CheckFn:
    def check(meta: Meta, spec: Spec) -> CheckResult:
        psc = _pod_sc(spec)
        forbidden = [str(s.get("name") or "") for s in (psc or {}).get("sysctls") or []
                     if isinstance(s, dict) and str(s.get("name") or "") not in allowed]
        if forbidden:
            return CheckResult(False, "forbidden sysctls", ", ".join(forbidden))
        return ALLOWED
    return check


def _windows_host_process_1_0(meta: Meta, spec: Spec) -> CheckResult:
    def host_process(sc: dict | None) -> bool:
        wo = _obj(sc.get("windowsOptions")) if sc is not None else None
        return wo is not None and wo.get("hostProcess") is True

    bad = [_name(c) for c in _containers(spec) if host_process(_sc(c))]
    setters = _setters(host_process(_pod_sc(spec)), bad)
    if setters:
        return CheckResult(False, "hostProcess",
                           f"{' and '.join(setters)} must not set securityContext.windowsOptions.hostProcess=true")
    return ALLOWED


# --- the registry (policy/registry.go) ------------------------------------------------------


@dataclass(frozen=True)
class VersionedCheck:
    minimum: Version
    check: CheckFn
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    id: str
    level: str
    versions: tuple[VersionedCheck, ...]

    def at(self, version: Version) -> VersionedCheck | None:
        current = None
        for v in self.versions:
            if v.minimum <= version:
                current = v
        return current


CHECKS: tuple[Check, ...] = (
    Check("allowPrivilegeEscalation", RESTRICTED, (VersionedCheck((1, 8), _allow_privilege_escalation_1_8),
                                                   VersionedCheck((1, 25), _allow_privilege_escalation_1_25))),
    Check("appArmorProfile", BASELINE, (VersionedCheck((1, 0), _app_armor_profile_1_0),)),
    Check("capabilities_baseline", BASELINE, (VersionedCheck((1, 0), _capabilities_baseline_1_0),)),
    Check("capabilities_restricted", RESTRICTED, (
        VersionedCheck((1, 22), _capabilities_restricted_1_22, ("capabilities_baseline",)),
        VersionedCheck((1, 25), _capabilities_restricted_1_25, ("capabilities_baseline",)))),
    Check("hostNamespaces", BASELINE, (VersionedCheck((1, 0), _host_namespaces_1_0),)),
    Check("hostPathVolumes", BASELINE, (VersionedCheck((1, 0), _host_path_volumes_1_0),)),
    Check("hostPorts", BASELINE, (VersionedCheck((1, 0), _host_ports_1_0),)),
    Check("privileged", BASELINE, (VersionedCheck((1, 0), _privileged_1_0),)),
    Check("procMount", BASELINE, (VersionedCheck((1, 0), _proc_mount_1_0),)),
    Check("restrictedVolumes", RESTRICTED, (VersionedCheck((1, 0), _restricted_volumes_1_0, ("hostPathVolumes",)),)),
    Check("runAsNonRoot", RESTRICTED, (VersionedCheck((1, 0), _run_as_non_root_1_0),)),
    Check("runAsUser", RESTRICTED, (VersionedCheck((1, 23), _run_as_user_1_23),)),
    Check("seLinuxOptions", BASELINE, (VersionedCheck((1, 0), _se_linux_options(_SELINUX_TYPES_1_0)),
                                       VersionedCheck((1, 31), _se_linux_options(_SELINUX_TYPES_1_31)))),
    Check("seccompProfile_baseline", BASELINE, (VersionedCheck((1, 0), _seccomp_profile_baseline_1_0),
                                                VersionedCheck((1, 19), _seccomp_profile_baseline_1_19))),
    Check("seccompProfile_restricted", RESTRICTED, (
        VersionedCheck((1, 19), _seccomp_profile_restricted_1_19, ("seccompProfile_baseline",)),
        VersionedCheck((1, 25), _seccomp_profile_restricted_1_25, ("seccompProfile_baseline",)))),
    Check("sysctls", BASELINE, (VersionedCheck((1, 0), _sysctls(_SYSCTLS_1_0)),
                                VersionedCheck((1, 27), _sysctls(_SYSCTLS_1_27)),
                                VersionedCheck((1, 29), _sysctls(_SYSCTLS_1_29)),
                                VersionedCheck((1, 32), _sysctls(_SYSCTLS_1_32)))),
    Check("windowsHostProcess", BASELINE, (VersionedCheck((1, 0), _windows_host_process_1_0),)),
)

#: The newest policy version the checks know: what "latest" (and any later version) means.
MAX_VERSION: Version = max(c.versions[-1].minimum for c in CHECKS)

# Baseline check IDs sorted, then restricted ones sorted (Go sorts the strings bytewise).
_ORDER = (sorted(c.id for c in CHECKS if c.level == BASELINE) + sorted(c.id for c in CHECKS if c.level == RESTRICTED))


@functools.cache
def checks_for(level: str, version: Version) -> tuple[tuple[str, CheckFn], ...]:
    """The (ID, check) list the evaluator runs for `level` at `version`, in order."""
    baseline = {c.id: v for c in CHECKS if c.level == BASELINE and (v := c.at(version)) is not None}
    if level == BASELINE:
        selected = baseline
    else:
        selected = {c.id: v for c in CHECKS if c.level == RESTRICTED and (v := c.at(version)) is not None}
        overridden = {o for v in selected.values() for o in v.overrides}
        selected.update({i: v for i, v in baseline.items() if i not in overridden})
    return tuple((i, selected[i].check) for i in _ORDER if i in selected)


def evaluate(lv: LevelVersion, meta: Meta, spec: Spec) -> list[CheckResult]:
    """Evaluator.EvaluatePod."""
    if lv.level == PRIVILEGED:
        return []
    version = MAX_VERSION if lv.version is None or lv.version > MAX_VERSION else lv.version
    return [check(meta, spec) for _, check in checks_for(lv.level, version)]


# --- the admission plugin (admission/admission.go) ------------------------------------------


@dataclass
class Exemptions:
    usernames: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    runtime_classes: list[str] = field(default_factory=list)


def _forbidden(name: str, message: str) -> ApiError:
    """apierrors.NewForbidden(pods, name, err)."""
    text = f'pods "{name}" is forbidden: {message}' if name else f"pods is forbidden: {message}"
    details: dict[str, Any] = {"name": name, "kind": "pods"} if name else {"kind": "pods"}
    return ApiError(403, "Forbidden", text, details)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


class PodSecurity:
    """The PodSecurity admission plugin of one API server (see the module docstring).

    `attrs` are `bimguard.sim.admission.Attributes` (rt, operation, namespace, name, obj, old,
    subresource, dry_run, user), read duck-typed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.enabled = True
        self.defaults = Policy()
        self.exemptions = Exemptions()

    # -- what reaches the plugin --------------------------------------------------------------

    @staticmethod
    def _group_resource(attrs: Any) -> tuple[str, str]:
        key = attrs.rt.key
        return key.group, key.plural

    def _namespace_labels(self, namespace: str) -> dict[str, str] | None:
        try:
            return self.store.get("v1/namespaces", None, namespace)["metadata"].get("labels") or {}
        except ApiError:
            return None

    def _exempt(self, attrs: Any) -> bool:
        namespace = attrs.namespace
        username = str((attrs.user or {}).get("username") or "")
        return bool(namespace and namespace in self.exemptions.namespaces) or \
            bool(username and username in self.exemptions.usernames)

    def handles(self, attrs: Any) -> bool:
        """Whether `validate` could answer anything but a silent allow (so callers can skip
        preparing the final object). Mirrors the plugin's short-circuits."""
        if not self.enabled or attrs.operation not in ("CREATE", "UPDATE"):
            return False
        gr = self._group_resource(attrs)
        if gr == ("", "namespaces"):
            return not attrs.subresource
        if gr == ("", "pods"):
            if attrs.subresource in IGNORED_POD_SUBRESOURCES:
                return False
        elif gr in POD_CONTROLLERS:
            if attrs.subresource:
                return False
        else:
            return False
        if self._exempt(attrs):
            return False
        labels = self._namespace_labels(attrs.namespace)
        if labels is None:
            return gr == ("", "pods")  # the pod path answers a lookup failure with an error
        policy, errors = policy_to_evaluate(labels, self.defaults)
        if errors:
            return True
        if gr == ("", "pods"):
            return not policy.fully_privileged()
        return not (policy.warn.level == PRIVILEGED and policy.audit.level == PRIVILEGED)

    def validate(self, attrs: Any) -> list[str]:
        """Admit or refuse one request (raises ApiError); returns the warnings."""
        if not self.handles(attrs):
            return []
        gr = self._group_resource(attrs)
        if gr == ("", "namespaces"):
            return self._validate_namespace(attrs)
        if gr == ("", "pods"):
            return self._validate_pod(attrs)
        return self._validate_pod_controller(attrs)

    # -- namespaces ---------------------------------------------------------------------------

    def _validate_namespace(self, attrs: Any) -> list[str]:
        obj = attrs.obj or {}
        name = obj.get("metadata", {}).get("name") or attrs.name
        # The request's namespace: "" on create, the namespace itself on update (requestinfo.go).
        request_ns = attrs.namespace or (name if attrs.operation == "UPDATE" else "")
        labels = obj.get("metadata", {}).get("labels") or {}
        new_policy, new_errors = policy_to_evaluate(labels, self.defaults)
        if attrs.operation == "CREATE":
            if new_errors:
                raise invalid(attrs.rt, name, new_errors)
            if request_ns in self.exemptions.namespaces:
                warning = self._exempt_namespace_warning(name, new_policy, labels)
                return [warning] if warning else []
            return []
        old_labels = ((attrs.old or {}).get("metadata") or {}).get("labels") or {}
        old_policy, old_errors = policy_to_evaluate(old_labels, self.defaults)
        if new_errors and (not old_errors or [str(e) for e in new_errors] != [str(e) for e in old_errors]):
            raise invalid(attrs.rt, name, new_errors)
        if new_policy.enforce == old_policy.enforce or new_policy.enforce.level == PRIVILEGED:
            return []
        if (new_policy.enforce.version == old_policy.enforce.version
                and compare_levels(new_policy.enforce.level, old_policy.enforce.level) < 1):
            return []
        if request_ns and request_ns in self.exemptions.namespaces:
            warning = self._exempt_namespace_warning(name, new_policy, labels)
            return [warning] if warning else []
        return self.evaluate_pods_in_namespace(name, new_policy.enforce)

    def _exempt_namespace_warning(self, namespace: str, policy: Policy, labels: Mapping[str, str]) -> str:
        if policy.fully_privileged() or policy.equivalent(self.defaults):
            return ""
        parts = []
        for mode, lv, level_label, version_label in (("enforce", policy.enforce, ENFORCE_LABEL, ENFORCE_VERSION_LABEL),
                                                     ("audit", policy.audit, AUDIT_LABEL, AUDIT_VERSION_LABEL),
                                                     ("warn", policy.warn, WARN_LABEL, WARN_VERSION_LABEL)):
            if lv.level != PRIVILEGED and (level_label in labels or version_label in labels):
                parts.append(f"{mode}={lv}")
        return (f'namespace "{namespace}" is exempt from Pod Security, and the policy ({", ".join(parts)}) '
                "will be ignored")

    def evaluate_pods_in_namespace(self, namespace: str, enforce: LevelVersion) -> list[str]:
        """EvaluatePodsInNamespace: warnings about existing pods a new enforce level refuses."""
        pods = self._prioritize(self.store.list("v1/pods", namespace)[0])
        total = len(pods)
        pods = pods[:NAMESPACE_MAX_PODS_TO_CHECK]
        counts: dict[str, list[Any]] = {}  # warning -> [lexically first pod name, count]
        order: list[str] = []
        for pod in pods:
            result = aggregate(evaluate(enforce, pod.get("metadata") or {}, pod.get("spec") or {}))
            if result.allowed:
                continue
            warning = result.forbidden_reason()
            name = pod["metadata"]["name"]
            if warning not in counts:
                counts[warning] = [name, 0]
                order.append(warning)
            elif name < counts[warning][0]:
                counts[warning][0] = name
            counts[warning][1] += 1
        warnings = []
        if len(pods) < total:
            warnings.append(f"new PodSecurity enforce level only checked against the first {len(pods)} of {total} "
                            "existing pods")
        if order:
            warnings.append(f'existing pods in namespace "{namespace}" violate the new PodSecurity enforce level '
                            f'"{enforce}"')
        decorated = []
        for warning in order:
            first, count = counts[warning]
            if count == 1:
                decorated.append(f"{first}: {warning}")
            elif count == 2:
                decorated.append(f"{first} (and 1 other pod): {warning}")
            else:
                decorated.append(f"{first} (and {count - 1} other pods): {warning}")
        return warnings + sorted(decorated)

    def _prioritize(self, pods: list[dict]) -> list[dict]:
        """prioritizePods: skip exempt runtime classes; one pod per controller first."""
        first, duplicates, seen = [], [], set()
        for pod in pods:
            if (pod.get("spec") or {}).get("runtimeClassName") in self.exemptions.runtime_classes:
                continue
            controller = next((ref for ref in (pod.get("metadata") or {}).get("ownerReferences") or []
                               if isinstance(ref, dict) and ref.get("controller") is True), None)
            if controller is None:
                first.append(pod)
            elif controller.get("uid") in seen:
                duplicates.append(pod)
            else:
                seen.add(controller.get("uid"))
                first.append(pod)
        return first + duplicates

    # -- pods and pod controllers -------------------------------------------------------------

    def _validate_pod(self, attrs: Any) -> list[str]:
        labels = self._namespace_labels(attrs.namespace)
        if labels is None:
            raise internal(f'failed to lookup namespace "{attrs.namespace}"')
        policy, errors = policy_to_evaluate(labels, self.defaults)
        if not errors and policy.fully_privileged():
            return []
        pod = attrs.obj or {}
        if attrs.operation == "UPDATE" and not _significant_pod_update(pod, attrs.old or {}):
            return []
        # AdmissionToValidateObjectFunc: a generated name is the name validating admission sees.
        name = attrs.name or (pod.get("metadata") or {}).get("name", "")
        return self._evaluate(policy, pod.get("metadata") or {}, pod.get("spec") or {}, name, enforce=True)

    def _validate_pod_controller(self, attrs: Any) -> list[str]:
        labels = self._namespace_labels(attrs.namespace)
        if labels is None:
            return []
        policy, errors = policy_to_evaluate(labels, self.defaults)
        if not errors and policy.warn.level == PRIVILEGED and policy.audit.level == PRIVILEGED:
            return []
        gr = self._group_resource(attrs)
        template = _dig(attrs.obj or {}, POD_CONTROLLERS[gr])
        if template is None:
            if gr in _POINTER_TEMPLATES:
                return []
            template = {}
        if not isinstance(template, dict):
            return []
        return self._evaluate(policy, template.get("metadata") or {}, template.get("spec") or {}, attrs.name,
                              enforce=False)

    def _evaluate(self, policy: Policy, meta: Meta, spec: Spec, name: str, *, enforce: bool) -> list[str]:
        """EvaluatePod (audit left out: the emulator has no audit log)."""
        if spec.get("runtimeClassName") and spec.get("runtimeClassName") in self.exemptions.runtime_classes:
            return []
        cached: dict[LevelVersion, AggregateResult] = {}
        if enforce:
            result = aggregate(evaluate(policy.enforce, meta, spec))
            if not result.allowed:
                raise _forbidden(name, f'violates PodSecurity "{policy.enforce}": {result.forbidden_detail()}')
            cached[policy.enforce] = result
        warn = cached.get(policy.warn) or aggregate(evaluate(policy.warn, meta, spec))
        if not warn.allowed:
            return [f'would violate PodSecurity "{policy.warn}": {warn.forbidden_detail()}']
        return []


def _significant_pod_update(pod: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """isSignificantPodUpdate: a container image changed, or a container was added."""
    spec, old_spec = pod.get("spec") or {}, old.get("spec") or {}
    for key in ("containers", "initContainers"):
        new_list, old_list = spec.get(key) or [], old_spec.get(key) or []
        if len(new_list) != len(old_list):
            return True
        if any((c or {}).get("image") != (o or {}).get("image") for c, o in zip(new_list, old_list)):
            return True
    old_ephemeral = {(c or {}).get("name"): c for c in old_spec.get("ephemeralContainers") or []}
    for c in spec.get("ephemeralContainers") or []:
        o = old_ephemeral.get((c or {}).get("name"))
        if o is None or (c or {}).get("image") != (o or {}).get("image"):
            return True
    return False


def check_ids(level: str, version: Version | None = None) -> list[str]:
    """The check IDs `level` runs at `version` (None: latest), in message order."""
    if level == PRIVILEGED:
        return []
    return [i for i, _ in checks_for(level, MAX_VERSION if version is None or version > MAX_VERSION else version)]


__all__ = [
    "CHECKS",
    "MAX_VERSION",
    "Exemptions",
    "LevelVersion",
    "PodSecurity",
    "Policy",
    "aggregate",
    "check_ids",
    "evaluate",
    "policy_to_evaluate",
]
