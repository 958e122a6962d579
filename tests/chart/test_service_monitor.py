"""The chart's ServiceMonitor: off by default; when on, it scrapes the metrics Service the way the
webhook serves /metrics (plain HTTP; HTTPS verified against the CA of the Secret the webhook
serves from, for a name its certificate carries; a bearer token), rendered by real Helm."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from jobs.cli import build_parser
from tests.chart.test_chart import FILES_MODE, NAMESPACE, RELEASE, Manifest, container, one, render
from webhook.certs import service_dns_names

ON = {"enabled": True}


def monitor(values: dict[str, Any]) -> Manifest:
    (found,) = [d for d in render(values) if d["kind"] == "ServiceMonitor"]
    return found


def endpoint(values: dict[str, Any]) -> Manifest:
    (found,) = monitor(values)["spec"]["endpoints"]
    return found


def test_off_by_default() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]


def test_it_selects_the_metrics_service_and_its_port() -> None:
    values = {"metrics": {"serviceMonitor": {**ON, "labels": {"release": "prom"}, "interval": "30s",
                                             "scrapeTimeout": "10s"}}}
    docs = render(values)
    (sm,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == NAMESPACE and sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = sm["spec"]["selector"]["matchLabels"]
    # Among the Services it selects, only the metrics Service has the port it names.
    services = [d for d in docs if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()]
    (ep,) = sm["spec"]["endpoints"]
    with_port = [s["metadata"]["name"] for s in services if ep["port"] in [p["name"] for p in s["spec"]["ports"]]]
    assert with_port == [f"{RELEASE}-bimguard-metrics"]
    assert {k: ep[k] for k in ("path", "scheme", "interval", "scrapeTimeout")} == {
        "path": "/metrics", "scheme": "http", "interval": "30s", "scrapeTimeout": "10s"}
    assert "tlsConfig" not in ep and "bearerTokenFile" not in ep and "authorization" not in ep
    # Empty interval and timeout: Prometheus' own.
    assert "interval" not in endpoint({"metrics": {"serviceMonitor": ON}})


@pytest.mark.parametrize("values, secret", [({}, f"{RELEASE}-bimguard-tls"), (FILES_MODE, "bimguard-serving-cert")],
                         ids=["selfManaged", "files"])
def test_https_is_verified_against_the_webhooks_ca_for_a_name_its_certificate_carries(
        values: dict[str, Any], secret: str) -> None:
    values = {**values, "metrics": {"tls": True, "serviceMonitor": ON}}
    docs = render(values)
    (ep,) = [d for d in docs if d["kind"] == "ServiceMonitor"][0]["spec"]["endpoints"]
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"]["ca"] == {"secret": {"name": secret, "key": "ca.crt"}}
    args = build_parser().parse_args(container(docs)["args"])
    assert args.metrics_tls
    # The Secret the webhook serves from: the self-managed one it keeps, or the one it mounts.
    if args.tls_cert_file:
        volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == [secret]
    else:
        assert args.secret_name == secret
    # The names the self-managed certificate is issued for (webhook/certs.py), which a files-mode
    # certificate must carry too (the API server verifies the webhook by the same name).
    assert ep["tlsConfig"]["serverName"] in service_dns_names(args.service_name, NAMESPACE)


def test_a_tls_config_of_ones_own_replaces_the_default() -> None:
    own = {"ca": {"configMap": {"name": "my-ca", "key": "ca.crt"}}, "serverName": "bg-bimguard.bimguard-system.svc"}
    ep = endpoint({"metrics": {"tls": True, "serviceMonitor": {**ON, "tlsConfig": own}}})
    assert ep["tlsConfig"] == own
    # Without metrics.tls there is nothing to verify.
    assert "tlsConfig" not in endpoint({"metrics": {"serviceMonitor": {**ON, "tlsConfig": own}}})


def test_authorization_sends_a_token() -> None:
    ep = endpoint({"metrics": {"tls": True, "authorization": True, "serviceMonitor": ON}})
    assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert "authorization" not in ep
    ep = endpoint({"metrics": {"tls": True, "authorization": True,
                               "serviceMonitor": {**ON, "tokenSecret": {"name": "prom-token", "key": "token"}}}})
    assert ep["authorization"] == {"type": "Bearer", "credentials": {"name": "prom-token", "key": "token"}}
    assert "bearerTokenFile" not in ep
    # No token where the webhook asks for none.
    ep = endpoint({"metrics": {"serviceMonitor": {**ON, "tokenSecret": {"name": "prom-token"}}}})
    assert "authorization" not in ep and "bearerTokenFile" not in ep


@pytest.mark.parametrize("bad, message", [
    ({"interval": "30"}, "interval"),
    ({"scrapeTimeout": "ten seconds"}, "scrapeTimeout"),
    ({"tokenSecret": {"name": "Not_A_Name"}}, "name"),
    ({"bogus": 1}, "bogus"),
])
def test_the_schema_refuses_what_prometheus_would_not_take(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render({"metrics": {"serviceMonitor": {**ON, **bad}}})
