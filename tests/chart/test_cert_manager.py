"""tls.mode certManager, rendered by real Helm: cert-manager issues the serving certificate (the
chart's own CA chain, or an existing issuer), the webhook mounts it as in files mode, and the CA
injector fills caBundle from the annotation. What the names must agree with is the code's: the
DNS names the self-managed mode issues (webhook/certs.py), the flags the webhook parses
(jobs/cli.py), the grants its calls need (webhook/permissions.py), the uninstall script's flags."""

from __future__ import annotations

import importlib.util
from typing import Any

import helm_python as helm
import pytest

from jobs.cli import build_parser
from tests.chart.rbac import grants
from tests.chart.test_chart import CHART, NAMESPACE, RELEASE, Manifest, container, one, render, webhook_grants
from webhook import permissions
from webhook.certs import service_dns_names

OWN_CA = {"tls": {"mode": "certManager"}}
ISSUER = {"tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}
BOTH = pytest.mark.parametrize("values", [OWN_CA, ISSUER], ids=["own-ca", "issuer"])
SERVING, CA = f"{RELEASE}-bimguard-serving", f"{RELEASE}-bimguard-ca"
UNINSTALL = f"{RELEASE}-bimguard-uninstall"


def cert_manager(docs: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d["apiVersion"] == "cert-manager.io/v1"}


def uninstall_args(docs: list[Manifest]) -> Any:
    spec = importlib.util.spec_from_file_location("chart_uninstall", CHART / "files" / "uninstall.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == UNINSTALL]
    return module.parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_other_modes_render_no_cert_manager_object() -> None:
    for values in ({}, {"tls": {"mode": "files", "secretName": "s"}}):
        assert cert_manager(render(values)) == {}


def test_the_charts_own_ca_chain() -> None:
    objs = cert_manager(render(OWN_CA))
    assert sorted(objs) == [("Certificate", CA), ("Certificate", SERVING),
                            ("Issuer", CA), ("Issuer", f"{RELEASE}-bimguard-selfsigned")]
    assert objs[("Issuer", f"{RELEASE}-bimguard-selfsigned")]["spec"] == {"selfSigned": {}}
    ca = objs[("Certificate", CA)]["spec"]
    assert ca["isCA"] is True and ca["duration"] == "87600h"
    assert ca["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": f"{RELEASE}-bimguard-selfsigned"}
    # The CA Issuer signs with the CA Certificate's Secret, and signs the serving certificate.
    assert objs[("Issuer", CA)]["spec"] == {"ca": {"secretName": ca["secretName"]}}
    assert objs[("Certificate", SERVING)]["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer",
                                                                   "name": CA}
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in objs.values())


def test_an_existing_issuer_signs_instead() -> None:
    objs = cert_manager(render(ISSUER))
    assert sorted(objs) == [("Certificate", SERVING)]
    assert objs[("Certificate", SERVING)]["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer",
                                                                   "name": "corp-ca"}
    external = {"tls": {"mode": "certManager", "certManager": {
        "issuerRef": {"name": "pca", "kind": "AWSPCAClusterIssuer", "group": "awspca.cert-manager.io"}}}}
    (serving,) = cert_manager(render(external)).values()
    assert serving["spec"]["issuerRef"] == {"group": "awspca.cert-manager.io", "kind": "AWSPCAClusterIssuer",
                                            "name": "pca"}


@BOTH
def test_the_serving_certificate_is_what_the_webhook_mounts_and_the_api_server_verifies(values: dict[str, Any]) -> None:
    docs = render(values)
    spec = cert_manager(docs)[("Certificate", SERVING)]["spec"]
    args = build_parser().parse_args(container(docs)["args"])
    # Mounted as in files mode: the Certificate's Secret, the files the webhook is told.
    assert (args.tls_cert_file, args.tls_key_file, args.tls_ca_file) == ("/etc/bimguard/tls/tls.crt",
                                                                         "/etc/bimguard/tls/tls.key", None)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == spec["secretName"] == f"{RELEASE}-bimguard-tls"
    # The names the self-managed mode issues for the Service the webhook configuration calls.
    mwc = one(docs, "MutatingWebhookConfiguration")
    svc = mwc["webhooks"][0]["clientConfig"]["service"]
    assert spec["dnsNames"] == list(service_dns_names(args.service_name, NAMESPACE))
    assert f"{svc['name']}.{svc['namespace']}.svc" in spec["dnsNames"]
    assert spec["usages"] == ["server auth", "digital signature"]
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert (spec["duration"], spec["renewBefore"]) == ("2160h", "720h")
    # The CA injector reads this Certificate; nothing renders a caBundle.
    assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/{SERVING}"}
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]


@BOTH
def test_the_webhook_gets_neither_secrets_nor_a_patch_of_its_configuration(values: dict[str, Any]) -> None:
    expected = set(permissions.permissions(self_managed_tls=False, injects_ca_bundle=False, metrics_authorization=False))
    assert webhook_grants(render(values)) == expected


@BOTH
def test_the_uninstall_hook_removes_the_certificates_then_their_secrets(values: dict[str, Any]) -> None:
    docs = render(values)
    args = uninstall_args(docs)
    own = values is OWN_CA
    certificates = [SERVING, CA] if own else [SERVING]
    secrets = [f"{RELEASE}-bimguard-tls", CA] if own else [f"{RELEASE}-bimguard-tls"]
    assert args.certificate == certificates and args.secret == secrets
    assert {name for kind, name in cert_manager(docs) if kind == "Certificate"} == set(certificates)
    granted = grants(docs, UNINSTALL, NAMESPACE)
    assert ("delete", "cert-manager.io", "certificates", NAMESPACE, tuple(certificates)) in granted
    assert ("delete", "", "secrets", NAMESPACE, tuple(secrets)) in granted
    # A Secret of one's own (files mode) is never the hook's to delete.
    assert not uninstall_args(render({"tls": {"mode": "files", "secretName": "s"}})).certificate


def test_values_and_overrides() -> None:
    values = {"tls": {"mode": "certManager", "secretName": "webhook-cert",
                      "certManager": {"duration": "720h", "renewBefore": "240h", "caDuration": "43800h"}}}
    objs = cert_manager(render(values))
    assert objs[("Certificate", SERVING)]["spec"]["secretName"] == "webhook-cert"
    assert (objs[("Certificate", SERVING)]["spec"]["duration"], objs[("Certificate", CA)]["spec"]["duration"]) == (
        "720h", "43800h")
    assert "cert-manager" in notes_text(values) and SERVING in notes_text(values)


def notes_text(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)["bimguard/templates/NOTES.txt"]


@pytest.mark.parametrize("bad, message", [
    ({"caBundle": "TFMw"}, "tls.mode=certManager"),
    ({"injectCABundle": True}, "tls.mode=certManager"),
    ({"certManager": {"injectCAFrom": "ns/cert"}}, "tls.mode=certManager"),
    ({"certManager": {"duration": "90 days"}}, "duration"),
    ({"certManager": {"issuerRef": {"kind": "issuer"}}}, "kind"),
    ({"certManager": {"issuerRef": {"bogus": 1}}}, "bogus"),
    ({"certManager": {"bogus": 1}}, "bogus"),
])
def test_the_schema_and_the_templates_refuse_what_cannot_work(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render({"tls": {"mode": "certManager", **bad}})


def test_files_mode_keeps_its_cert_manager_annotation() -> None:
    values = {"tls": {"mode": "files", "secretName": "s", "certManager": {"injectCAFrom": f"{NAMESPACE}/mine"}}}
    mwc = one(render(values), "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/mine"}


@BOTH
def test_lint_is_clean_even_strict(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
