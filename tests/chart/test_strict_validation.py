"""Every manifest the chart renders, and every CRD it ships, validated in STRICT mode (an unknown
field is an error, as `kubectl apply` treats it by default) against the Kubernetes OpenAPI
schemas of 1.25 to 1.34 with kubernetes-validate, rendered for that very version (the chart
branches on .Capabilities.KubeVersion), with the defaults and with every documented option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native  # --kube-version, which the Python wrapper does not expose

from tests.chart.test_repair_chart import ALL_OPTIONS as REPAIR_OPTIONS

CHART = Path(__file__).resolve().parents[2] / "charts" / "bimguard"
VERSIONS = [f"1.{minor}.0" for minor in range(25, 35)]
# Kinds of other projects' CRDs (the Prometheus Operator's, cert-manager's): no Kubernetes schema to
# validate against.
MONITORING = {("monitoring.coreos.com/v1", "PrometheusRule"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
CERT_MANAGER = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
FOREIGN = MONITORING | CERT_MANAGER

EVERYTHING: dict[str, Any] = {
    **REPAIR_OPTIONS,
    "replicaCount": 3, "podLabels": {"team": "storage"}, "podAnnotations": {"example.com/a": "b"},
    "imagePullSecrets": [{"name": "regcred"}],
    "metrics": {"tls": True, "authorization": True, "prometheusRule": {"enabled": True, "labels": {"release": "p"}},
                "serviceMonitor": {"enabled": True, "labels": {"release": "p"}, "interval": "30s", "scrapeTimeout": "10s",
                                   "tokenSecret": {"name": "prom-token", "key": "token"}}},
    "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.0/24"], "metricsNamespaceSelector": {}},
}
FILES_TLS = {"tls": {"mode": "files", "secretName": "bimguard-cert", "certManager": {"injectCAFrom": "ns/cert"}}}
CERT_MANAGER_TLS = {"tls": {"mode": "certManager"}}  # the chart's own CA chain
CERT_MANAGER_ISSUER = {"tls": {"mode": "certManager", "secretName": "webhook-cert",
                               "certManager": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}}
# Which foreign kinds each variant renders.
VARIANTS = {"defaults": ({}, set()), "every-option": (EVERYTHING, MONITORING), "files-tls": (FILES_TLS, set()),
            "cert-manager": (CERT_MANAGER_TLS, CERT_MANAGER), "cert-manager-issuer": (CERT_MANAGER_ISSUER, {("cert-manager.io/v1", "Certificate")})}


def render(values: dict[str, Any], version: str) -> list[dict[str, Any]]:
    opts = {"name": "bg", "namespace": "bimguard-system", "is_install": True, "kube_version": f"v{version}"}
    with helm.Chart.load(CHART) as chart:
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def strict_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{doc['kind']} {doc['metadata'].get('name')}: {err.message} at {'/'.join(map(str, err.path))}"]
    return []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_are_valid_in_strict_mode(version: str, variant: str) -> None:
    values, foreign = VARIANTS[variant]
    rendered = render(values, version)
    assert {(d["apiVersion"], d["kind"]) for d in rendered} & FOREIGN == foreign
    docs = [d for d in rendered if (d["apiVersion"], d["kind"]) not in FOREIGN]
    assert len(docs) > 10
    errors = [e for d in docs for e in strict_errors(d, version)]
    assert errors == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_crds_are_valid_in_strict_mode(version: str) -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    assert len(crds) == 2
    assert [e for c in crds for e in strict_errors(c, version)] == []


def test_a_field_kubernetes_does_not_know_is_caught() -> None:
    """The check can fail: an unknown field in a rendered Deployment is an error in strict mode."""
    [deployment] = [d for d in render({}, "1.30.0") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    assert strict_errors(deployment, "1.30.0")
