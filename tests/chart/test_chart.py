"""The Helm chart, rendered by real Helm (helm_python: Helm's Go SDK as a library, offline).

Most important: the MutatingWebhookConfiguration the chart installs registers exactly the scope
the server routes on (webhook/scope.py), so code and registration cannot drift apart. Then the
operational contract: non-root pod, probes and ports that agree, least-privilege RBAC,
both TLS modes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from jobs.cli import build_parser
from tests.chart.rbac import grants as granted
from webhook import permissions, scope

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
RELEASE, NAMESPACE = "bg", "bimguard-system"
REWRITER_NS = f"{NAMESPACE}-{RELEASE}-bimguard-rewriter"
FILES_MODE = {"tls": {"mode": "files", "secretName": "bimguard-serving-cert"}}

Manifest = dict[str, Any]


@lru_cache(maxsize=None)
def _render(values_json: str, namespace: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(json.loads(values_json), name=RELEASE, namespace=namespace, is_install=True)
    return tuple(sorted(out.items()))


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in _render(json.dumps(values or {}, sort_keys=True), namespace):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d is not None)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    return dict(_render(json.dumps(values or {}, sort_keys=True), NAMESPACE))["bimguard/templates/NOTES.txt"]


def component(d: Manifest) -> str:
    return d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def one(docs: list[Manifest], kind: str, namespace: str | None = None, of: str = "webhook") -> Manifest:
    """The one `kind` (in `namespace`) of the component `of`: the webhook's, unless said otherwise
    (the repair's, the scan's and the uninstall hook's objects: tests/chart/test_repair_chart.py)."""
    found = [d for d in docs if d["kind"] == kind and (namespace is None or d["metadata"].get("namespace") == namespace)
             and component(d) == of]
    assert len(found) == 1, f"{len(found)} {kind} in {namespace}"
    return found[0]


def service(docs: list[Manifest], name: str = f"{RELEASE}-bimguard") -> Manifest:
    (found,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    return found


def container(docs: list[Manifest]) -> Manifest:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_number(c: Manifest, port: int | str) -> int:
    """A probe's or Service's targetPort, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return match


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


BOTH_MODES = pytest.mark.parametrize("values", [{}, FILES_MODE], ids=["selfManaged", "files"])


# -- rendering and lint ----------------------------------------------------------------------------------

@BOTH_MODES
def test_every_manifest_parses_and_is_named(values: dict[str, Any]) -> None:
    docs = render(values)
    kinds = sorted(d["kind"] for d in docs if component(d) in ("webhook", "rewriter"))
    assert kinds == sorted(["Deployment", "Service", "Service", "PodDisruptionBudget", "ServiceAccount", "ServiceAccount",
                            "Role", "Role", "Role", "RoleBinding", "RoleBinding", "RoleBinding", "ClusterRole",
                            "ClusterRoleBinding", "MutatingWebhookConfiguration", "Namespace",
                            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
    assert {component(d) for d in docs} == {"webhook", "rewriter", "repair", "uninstall", "test"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        assert len(d["metadata"]["name"]) <= 63
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        cluster_scoped = d["kind"] in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "Namespace",
                                       "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
        assert ("namespace" in d["metadata"]) != cluster_scoped, d["kind"]


@BOTH_MODES
@pytest.mark.parametrize("namespace", [NAMESPACE, None], ids=["namespace", "no-namespace"])
def test_lint_is_clean_even_strict(values: dict[str, Any], namespace: str | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=namespace)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_crds_ship_with_the_chart() -> None:
    with helm.Chart.load(CHART) as chart:
        names = sorted(yaml.safe_load(c["data"] if isinstance(c["data"], str) else bytes(c["data"]))["metadata"]["name"]
                       for c in chart.crds)
    assert names == ["diskrewrites.bimguard.io", "prefixclaims.bimguard.io"]


def test_the_tls_metrics_and_test_values_are_documented_in_the_readme() -> None:
    """Each leaf of these values is named in the chart README (the repair's and the uninstall's:
    tests/chart/test_repair_chart.py)."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(value: Any, path: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [p for k, v in value.items() for p in leaves(v, f"{path}.{k}")]
        return [path]

    for key in [leaf for top in ("tls", "metrics", "test") for leaf in leaves(values[top], top)]:
        assert f"`{key}`" in readme, f"{key} is not documented in charts/bimguard/README.md"


def test_bad_values_are_refused() -> None:
    with pytest.raises(helm.HelmError, match="tls.mode|/tls/mode"):
        render({"tls": {"mode": "bogus"}})
    with pytest.raises(helm.HelmError, match="secretName"):
        render({"tls": {"mode": "files"}})
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30})
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"preStopSleepSeconds": 20, "shutdownDelaySeconds": 10, "terminationGracePeriodSeconds": 30})
    with pytest.raises(helm.HelmError):
        render({"longhorn": {"namespace": "Not_A_Namespace"}})


# -- the webhook configuration == webhook/scope.py ------------------------------------------------------

@BOTH_MODES
def test_webhook_configuration_matches_the_declared_scope(values: dict[str, Any]) -> None:
    docs = render(values)
    mwc = one(docs, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    s = scope.LONGHORN_NODE_STATUS
    assert hook["name"] == scope.WEBHOOK_NAME
    assert hook["rules"] == [{
        "apiGroups": [s.group], "apiVersions": [s.version], "resources": [s.rule_resource],
        "operations": list(s.operations), "scope": "Namespaced",
    }]
    assert hook["failurePolicy"] == scope.FAILURE_POLICY
    assert hook["sideEffects"] == scope.SIDE_EFFECTS
    assert hook["timeoutSeconds"] == scope.TIMEOUT_SECONDS
    assert hook["admissionReviewVersions"] == list(scope.ADMISSION_REVIEW_VERSIONS)
    assert hook["matchPolicy"] == "Equivalent"  # Longhorn v1.7/v1.8 serve nodes at v1beta1 too: converted for us
    assert hook["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "longhorn-system"}}
    assert "objectSelector" not in hook
    # Helm's default Kubernetes version has matchConditions: the scope's, character for character
    # (per Kubernetes version: tests/chart/test_match_conditions_chart.py).
    assert hook["matchConditions"] == [c.as_dict() for c in scope.MATCH_CONDITIONS]

    svc = service(docs)
    https = [p for p in svc["spec"]["ports"] if p["name"] == "https"][0]
    assert hook["clientConfig"] == {"service": {
        "name": svc["metadata"]["name"], "namespace": NAMESPACE, "path": s.path, "port": https["port"]}}
    assert https["port"] == 443
    # The server is told this configuration's name (caBundle injection) and RBAC grants exactly it.
    assert flag(container(docs)["args"], "webhook-configuration") == mwc["metadata"]["name"]


def test_scope_values_are_not_overridable() -> None:
    # The scope is rendered from the template, not from values: no value can change it.
    with helm.Chart.load(CHART) as chart:
        values = json.dumps(chart.values)
    for word in (scope.WEBHOOK_NAME, scope.LONGHORN_NODE_STATUS.rule_resource, scope.FAILURE_POLICY,
                 scope.SIDE_EFFECTS):
        assert word not in values


def test_longhorn_namespace_drives_the_selector_and_the_role() -> None:
    docs = render({"longhorn": {"namespace": "storage"}})
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "storage"}}
    one(docs, "Role", "storage")
    one(docs, "RoleBinding", "storage")
    assert flag(container(docs)["args"], "longhorn-namespace") == "storage"


def test_ca_bundle_is_never_rendered_empty() -> None:
    (hook,) = one(render(), "MutatingWebhookConfiguration")["webhooks"]
    assert "caBundle" not in hook["clientConfig"]  # the leader injects it; an empty one would be applied over it
    values = {**FILES_MODE, "tls": {**FILES_MODE["tls"], "caBundle": "TFMwdExTMUNSVWRKVGc9PQ=="}}
    (hook,) = one(render(values), "MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["caBundle"] == "TFMwdExTMUNSVWRKVGc9PQ=="


def test_cert_manager_ca_injection() -> None:
    values = {"tls": {**FILES_MODE["tls"], "certManager": {"injectCAFrom": f"{NAMESPACE}/bimguard-serving-cert"}}}
    mwc = one(render(values), "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/bimguard-serving-cert"}
    assert "WARNING" not in notes(values)
    assert "WARNING" in notes(FILES_MODE)


# -- the Deployment --------------------------------------------------------------------------------------

@BOTH_MODES
def test_pod_runs_as_non_root_with_nothing_extra(values: dict[str, Any]) -> None:
    docs = render(values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


@BOTH_MODES
def test_ports_probes_and_service_agree(values: dict[str, Any]) -> None:
    docs = render(values)
    c = container(docs)
    https = port_number(c, "https")
    metrics = port_number(c, "metrics")
    assert (https, metrics) == (9443, 9090)
    assert int(flag(c["args"], "port")) == https
    assert int(flag(c["args"], "metrics-port")) == metrics
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert (get["path"], get["scheme"], port_number(c, get["port"])) == (path, "HTTPS", https)
    assert port_number(c, c["startupProbe"]["httpGet"]["port"]) == https
    # One port per Service: the webhook's Service exposes nothing but the webhook.
    ports = {p["name"]: p for p in service(docs)["spec"]["ports"]}
    assert list(ports) == ["https"]
    assert (ports["https"]["port"], port_number(c, ports["https"]["targetPort"])) == (443, https)
    (mport,) = service(docs, f"{RELEASE}-bimguard-metrics")["spec"]["ports"]
    assert (mport["name"], mport["port"], port_number(c, mport["targetPort"])) == ("metrics", 9090, metrics)


def test_custom_ports_stay_consistent() -> None:
    docs = render({"containerPorts": {"https": 10443, "metrics": 18080}})
    c = container(docs)
    assert int(flag(c["args"], "port")) == port_number(c, "https") == 10443
    assert int(flag(c["args"], "metrics-port")) == port_number(c, "metrics") == 18080
    ports = {p["name"]: p for p in service(docs)["spec"]["ports"]}
    assert port_number(c, ports["https"]["targetPort"]) == 10443
    (mport,) = service(docs, f"{RELEASE}-bimguard-metrics")["spec"]["ports"]
    assert port_number(c, mport["targetPort"]) == 18080


def test_selectors_match_the_pods() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service(docs)["spec"]["selector"],
                     service(docs, f"{RELEASE}-bimguard-metrics")["spec"]["selector"],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_pod_labels_cannot_override_the_selector_labels() -> None:
    """podLabels are added to the webhook's pods, but a key the Deployment, the Service and the
    PDB select by keeps the chart's value: otherwise the Deployment is refused (its template no
    longer matches its selector) or the Service sends reviews to other pods."""
    hostile = {"app.kubernetes.io/name": "other", "app.kubernetes.io/instance": "x",
               "app.kubernetes.io/component": "rewriter", "team": "storage"}
    docs = render({"podLabels": hostile})
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert labels["team"] == "storage"
    assert service(docs)["spec"]["selector"].items() <= labels.items()


def test_availability_settings() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    sleep = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and pod["terminationGracePeriodSeconds"] > int(sleep[1]) > 0
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert container(docs)["resources"]["requests"] and container(docs)["resources"]["limits"]
    # One replica: a PDB with minAvailable 1 would block every drain.
    assert not [d for d in render({"replicaCount": 1}) if d["kind"] == "PodDisruptionBudget"]


def test_webhook_command_line() -> None:
    docs = render({"extraArgs": ["--log-level=warning"], "logLevel": "debug", "image": {"repository": "r.io/b", "tag": "t1"}})
    c = container(docs)
    assert c["image"] == "r.io/b:t1"
    args = c["args"]
    assert args[0] == "webhook"
    assert flag(args, "namespace") == NAMESPACE
    assert flag(args, "longhorn-namespace") == "longhorn-system"
    assert flag(args, "service-name") == service(docs)["metadata"]["name"]
    assert args[-2:] == ["--log-level=debug", "--log-level=warning"]  # extraArgs last, so they win


@pytest.mark.parametrize("values", [{}, FILES_MODE, {"tls": {**FILES_MODE["tls"], "injectCABundle": True}}],
                         ids=["selfManaged", "files", "files+inject"])
def test_the_real_cli_accepts_the_chart_args_and_they_agree(values: dict[str, Any]) -> None:
    """The container's ENTRYPOINT is `bimguard` (jobs.cli:main): parse the rendered args with that
    very parser, so a renamed or missing flag fails here rather than crash-looping the pod."""
    docs = render(values)
    c = container(docs)
    args = build_parser().parse_args(c["args"])
    assert args.command == "webhook"
    assert (args.namespace, args.longhorn_namespace) == (NAMESPACE, "longhorn-system")
    assert args.port == port_number(c, "https") and args.metrics_port == port_number(c, "metrics")
    assert args.service_name == service(docs)["metadata"]["name"]
    assert args.webhook_configuration == one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > sleep + args.shutdown_delay
    own = rules(docs, "Role", NAMESPACE)
    if values.get("tls", {}).get("mode") == "files":
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        files = [args.tls_cert_file, args.tls_key_file] + ([args.tls_ca_file] if args.tls_ca_file else [])
        assert all(str(Path(f).parent) in mounts for f in files)
        assert bool(args.tls_ca_file) == bool(values["tls"].get("injectCABundle"))
    else:
        assert args.tls_cert_file is None
        named = [r for r in own if "secrets" in r["resources"] and r.get("resourceNames")]
        assert named[0]["resourceNames"] == [args.secret_name]
    # caBundle injection is allowed exactly when the process will do it.
    mwc_rule = [r for r in rules(docs, "ClusterRole") if "mutatingwebhookconfigurations" in r["resources"]][0]
    injects = args.tls_cert_file is None or args.tls_ca_file is not None
    assert ("patch" in mwc_rule["verbs"]) == injects


def test_the_names_the_webhook_is_told_are_the_ones_the_chart_makes() -> None:
    """The Lease, the rewriter namespace and ServiceAccount reach the process by flags, and RBAC
    and the objects use the same names."""
    docs = render()
    args = build_parser().parse_args(container(docs)["args"])
    leases = [r for r in rules(docs, "Role", NAMESPACE) if "leases" in r["resources"] and r.get("resourceNames")]
    assert [r["resourceNames"] for r in leases] == [[args.lease_name]] == [[f"{RELEASE}-bimguard-controller"]]
    assert args.rewriter_namespace == REWRITER_NS
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == REWRITER_NS
    (rewriter,) = [d for d in docs if d["kind"] == "ServiceAccount" and component(d) == "rewriter"]
    assert (rewriter["metadata"]["name"], rewriter["metadata"]["namespace"]) == (args.rewriter_service_account,
                                                                                 REWRITER_NS)
    assert grants(rules(docs, "Role", REWRITER_NS), "", "pods")


def test_two_releases_in_one_namespace_do_not_clash() -> None:
    """Every object name of a release carries its fullname: two releases in one namespace can both
    be installed (Helm refuses an object another release owns) and elect their own leaders."""
    with helm.Chart.load(CHART) as chart:
        a = chart.render({}, name="one", namespace=NAMESPACE, is_install=True)
        b = chart.render({}, name="two", namespace=NAMESPACE, is_install=True)

    def objects(out: dict[str, str]) -> set[tuple[str, str, str]]:
        return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
                for path, text in out.items() if not path.endswith("NOTES.txt")
                for d in yaml.safe_load_all(text) if d}

    assert objects(a) & objects(b) == set()

    def run_time_names(out: dict[str, str]) -> set[str]:
        (dep,) = [d for path, text in out.items() if path.endswith("deployment.yaml") for d in yaml.safe_load_all(text) if d]
        args = build_parser().parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
        return {args.lease_name, args.secret_name, args.rewriter_service_account}

    assert run_time_names(a) & run_time_names(b) == set()


def test_tls_modes() -> None:
    self_managed = container(render())
    assert "--secret-name=bg-bimguard-tls" in self_managed["args"]
    assert not [a for a in self_managed["args"] if a.startswith("--tls-cert-file")]
    assert [m["name"] for m in self_managed["volumeMounts"]] == ["tmp"]

    docs = render(FILES_MODE)
    files = container(docs)
    assert flag(files["args"], "tls-cert-file") == "/etc/bimguard/tls/tls.crt"
    assert flag(files["args"], "tls-key-file") == "/etc/bimguard/tls/tls.key"
    assert not [a for a in files["args"] if a.startswith(("--secret-name", "--tls-ca-file"))]
    mount = [m for m in files["volumeMounts"] if m["name"] == "tls"][0]
    assert mount == {"name": "tls", "mountPath": "/etc/bimguard/tls", "readOnly": True}
    volume = [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"][0]
    assert volume["secret"]["secretName"] == "bimguard-serving-cert"


# -- RBAC ------------------------------------------------------------------------------------------------

def rules(docs: list[Manifest], kind: str, namespace: str | None = None) -> list[Manifest]:
    return one(docs, kind, namespace)["rules"]


def grants(rule_list: list[Manifest], group: str, resource: str) -> set[str]:
    return {v for r in rule_list if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


@BOTH_MODES
def test_rbac_has_no_wildcards_and_no_cluster_wide_secrets(values: dict[str, Any]) -> None:
    docs = render(values)
    for d in docs:
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for r in d["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in x for x in r.get(key, [])), (d["kind"], r)
            assert "nonResourceURLs" not in r
            assert not {"escalate", "bind", "impersonate"} & set(r["verbs"])
    cluster = rules(docs, "ClusterRole")
    assert all(r.get("resourceNames") for r in cluster), "every cluster-scoped grant names its object"
    assert not grants(cluster, "", "secrets") and not grants(cluster, "", "pods")
    assert not grants(rules(docs, "Role", "longhorn-system"), "", "secrets")


def webhook_grants(docs: list[Manifest]) -> set[tuple[str, str, str, str, str]]:
    """The rendered grants of the webhook's ServiceAccount, in webhook/permissions.py's terms."""
    where = {"longhorn-system": "lh", NAMESPACE: "own", REWRITER_NS: "pods", "": "cluster"}
    names = {f"{RELEASE}-bimguard-controller": permissions.LEASE, f"{RELEASE}-bimguard-tls": permissions.TLS_SECRET,
             f"{RELEASE}-bimguard-{NAMESPACE}": permissions.WEBHOOK_CONFIGURATION}
    out = set()
    for verb, group, resource, ns, resource_names in granted(docs, f"{RELEASE}-bimguard", NAMESPACE):
        assert ns in where, f"{verb} {resource} granted in {ns}"
        assert len(resource_names) <= 1, (verb, resource, resource_names)
        out.add((verb, group, resource, where[ns], names.get("".join(resource_names), "".join(resource_names))))
    return out


@pytest.mark.parametrize("values, self_managed, injects, metrics_auth", [
    ({}, True, True, False),
    (FILES_MODE, False, False, False),
    ({"tls": {**FILES_MODE["tls"], "injectCABundle": True}}, False, True, False),
    ({"metrics": {"tls": True, "authorization": True}}, True, True, True),
], ids=["selfManaged", "files", "files+inject", "metrics-authorization"])
def test_the_webhook_is_granted_exactly_what_its_code_calls(values: dict[str, Any], self_managed: bool,
                                                            injects: bool, metrics_auth: bool) -> None:
    """webhook/permissions.py lists every call the webhook makes (tests/webhook/test_permissions.py
    holds the running process to it): the chart grants exactly that, no more, no less."""
    docs = render(values)
    args = build_parser().parse_args(container(docs)["args"])
    assert (args.tls_cert_file is None, args.metrics_authorization) == (self_managed, metrics_auth)
    expected = set(permissions.permissions(self_managed_tls=self_managed, injects_ca_bundle=injects,
                                           metrics_authorization=metrics_auth))
    got = webhook_grants(docs)
    assert sorted(expected - got) == [], "missing grants"
    assert sorted(got - expected) == [], "grants no code uses"


def test_rbac_drops_what_the_code_never_used() -> None:
    """The grants a review found unused (issue 11) stay gone."""
    got = webhook_grants(render())
    for verb, group, resource in (("get", "apiextensions.k8s.io", "customresourcedefinitions"),
                                  ("patch", "", "events"), ("create", "events.k8s.io", "events"),
                                  ("patch", "bimguard.io", "diskrewrites"), ("patch", "bimguard.io", "prefixclaims"),
                                  ("update", "bimguard.io", "diskrewrites"), ("patch", "bimguard.io", "diskrewrites/status"),
                                  ("get", "longhorn.io", "replicas"), ("get", "longhorn.io", "settings"),
                                  ("create", "", "pods")):
        assert not [g for g in got if g[:3] == (verb, group, resource) and g[3] != "pods"], (verb, group, resource)
    # Pods only in the rewriter namespace.
    assert {g[3] for g in got if g[2] == "pods"} == {"pods"}


def test_rbac_release_namespace() -> None:
    docs = render()
    own = rules(docs, "Role", NAMESPACE)
    assert not grants(own, "", "pods"), "no pods in the release namespace"
    # Secrets: get/update only the TLS Secret by name; create cannot be restricted by name in Kubernetes RBAC.
    secret_rules = [r for r in own if "secrets" in r["resources"]]
    assert {v for r in secret_rules if not r.get("resourceNames") for v in r["verbs"]} == {"create"}
    named = [r for r in secret_rules if r.get("resourceNames")]
    assert named == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["bg-bimguard-tls"],
                      "verbs": ["get", "update"]}]
    lease_rules = [r for r in own if "leases" in r["resources"]]
    assert {v for r in lease_rules if not r.get("resourceNames") for v in r["verbs"]} == {"create"}
    assert {v for r in lease_rules if r.get("resourceNames") for v in r["verbs"]} == {"get", "update"}

    files = rules(render(FILES_MODE), "Role", NAMESPACE)
    assert not [r for r in files if "secrets" in r["resources"]], "files mode mounts the Secret; no API access"


def test_rbac_cluster_scope_is_by_name() -> None:
    docs = render()
    mwc = one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    cluster = rules(docs, "ClusterRole")
    by_resource = {r["resources"][0]: r for r in cluster}
    assert set(by_resource) == {"mutatingwebhookconfigurations"}
    assert by_resource["mutatingwebhookconfigurations"]["resourceNames"] == [mwc]
    assert set(by_resource["mutatingwebhookconfigurations"]["verbs"]) == {"get", "patch"}
    files = {r["resources"][0]: r for r in rules(render(FILES_MODE), "ClusterRole")}
    assert files["mutatingwebhookconfigurations"]["verbs"] == ["get"]  # nothing to inject
    inject = {"tls": {**FILES_MODE["tls"], "injectCABundle": True}}
    files = {r["resources"][0]: r for r in rules(render(inject), "ClusterRole")}
    assert files["mutatingwebhookconfigurations"]["verbs"] == ["get", "patch"]


def test_rbac_covers_bimguards_crds() -> None:
    own = rules(render(), "Role", NAMESPACE)
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert grants(own, crd["spec"]["group"], crd["spec"]["names"]["plural"]), path.name


def test_bindings_point_at_the_webhook_service_account_only() -> None:
    docs = render()
    sa = one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and component(d) == "webhook"]
    assert len(bindings) == 4
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        target = [d for d in docs if d["kind"] == b["roleRef"]["kind"] and d["metadata"]["name"] == b["roleRef"]["name"]
                  and d["metadata"].get("namespace") == b["metadata"].get("namespace")]
        assert len(target) == 1, b["metadata"]["name"]


def test_rewriter_service_account_has_no_token_and_no_permissions() -> None:
    docs = render()
    (rewriter,) = [d for d in docs if d["kind"] == "ServiceAccount"
                   and d["metadata"]["labels"]["app.kubernetes.io/component"] == "rewriter"]
    assert rewriter["automountServiceAccountToken"] is False
    name = rewriter["metadata"]["name"]
    assert not [b for b in docs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and any(s["name"] == name for s in b["subjects"])]


# -- metrics and the optional NetworkPolicy --------------------------------------------------------------

def test_metrics_tls_and_authorization() -> None:
    plain = build_parser().parse_args(container(render())["args"])
    assert not plain.metrics_tls and not plain.metrics_authorization
    assert not [d for d in render() if d["kind"] == "ClusterRole" and "metrics-reader" in d["metadata"]["name"]]
    docs = render({"metrics": {"tls": True, "authorization": True}})
    args = build_parser().parse_args(container(docs)["args"])
    assert args.metrics_tls and args.metrics_authorization
    (reader,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-metrics-reader")]
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    # Bound to nobody by the chart: the operator binds it to the scraper.
    assert not [b for b in docs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and b["roleRef"]["name"] == reader["metadata"]["name"]]


def test_the_network_policy_is_off_by_default_and_admits_what_its_values_say() -> None:
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"]
    with pytest.raises(helm.HelmError, match="apiServerCIDRs"):
        render({"networkPolicy": {"enabled": True}})
    with pytest.raises(helm.HelmError):
        render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["not-a-cidr"]}})
    docs = render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.10/32", "fd00::1/128"],
                                     "metricsNamespaceSelector": {"matchLabels": {"name": "monitoring"}}}})
    (np,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec = np["spec"]
    assert spec["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]  # egress to the API server is not restricted
    webhook_rule, test_rule, metrics_rule = spec["ingress"]
    assert webhook_rule == {"from": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
                            "ports": [{"port": "https", "protocol": "TCP"}]}
    # `helm test`'s Pod, and only it, reaches the webhook port from inside the cluster.
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert test_rule["ports"] == [{"port": "https", "protocol": "TCP"}]
    (peer,) = test_rule["from"]
    selector = peer["podSelector"]["matchLabels"]
    assert selector.items() <= test_pod["metadata"]["labels"].items()
    templates = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")] + [
        d["spec"]["jobTemplate"]["spec"]["template"] for d in docs if d["kind"] == "CronJob"]
    assert templates and not [t for t in templates if selector.items() <= t["metadata"].get("labels", {}).items()]
    (np_without_test,) = [d for d in render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.10/32"]},
                                             "test": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]
    assert len(np_without_test["spec"]["ingress"]) == 2
    assert metrics_rule == {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                            "ports": [{"port": "metrics", "protocol": "TCP"}]}
    names = {p["name"] for p in container(docs)["ports"]}
    assert {"https", "metrics"} <= names
