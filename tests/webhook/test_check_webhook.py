"""`bimguard check-webhook` (jobs/check_webhook.py), the command the chart's `helm test` Pod runs:
where it calls (the configuration's Service or URL, the name the API server verifies), what it
accepts as an answer, and that every way it can fail is one line with its exit code. Its run
against a real webhook in the emulator, as the chart renders it: tests/chart/test_helm_test.py."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bimguard.sim.apiserver import ApiServer
from jobs.check_webhook import CheckError, Failed, address, review, run, target, verdict
from jobs.cli import build_parser, main
from tests.webhook.test_process import free_port
from webhook import scope
from webhook.certs import _cert_pem, new_ca
from webhook.registration import mutating_webhook_configuration

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def configuration(**client_config: Any) -> dict[str, Any]:
    return {"metadata": {"name": "bg"}, "webhooks": [{"name": scope.WEBHOOK_NAME, "timeoutSeconds": 5,
                                                      "clientConfig": client_config}]}


def test_it_calls_the_service_by_the_name_the_api_server_verifies() -> None:
    t = target(configuration(service={"name": "bg-bimguard", "namespace": "ns", "path": "/mutate", "port": 8443},
                             caBundle=base64.b64encode(PEM).decode()), scope.WEBHOOK_NAME, None)
    assert (t.url, t.host, t.port, t.path, t.ca_bundle, t.timeout) == (
        "https://bg-bimguard.ns.svc:8443/mutate", "bg-bimguard.ns.svc", 8443, "/mutate", PEM, 5.0)
    # Port 443 by default; a URL as given; no caBundle: the system roots.
    t = target(configuration(service={"name": "s", "namespace": "ns"}), scope.WEBHOOK_NAME, 2.0)
    assert (t.url, t.ca_bundle, t.timeout) == ("https://s.ns.svc:443/", b"", 2.0)
    t = target(configuration(url="https://hooks.example.com/bimguard"), scope.WEBHOOK_NAME, None)
    assert (t.host, t.port, t.path) == ("hooks.example.com", 443, "/bimguard")


def test_a_configuration_it_cannot_use() -> None:
    with pytest.raises(CheckError, match="has no webhook other.example"):
        target(configuration(service={"name": "s", "namespace": "ns"}), "other.example", None)
    with pytest.raises(Failed, match="caBundle is not base64"):
        target(configuration(service={"name": "s", "namespace": "ns"}, caBundle="not base64!"), scope.WEBHOOK_NAME, None)
    with pytest.raises(Failed, match="neither service nor url"):
        target(configuration(), scope.WEBHOOK_NAME, None)


def test_the_review_is_in_scope_and_records_nothing() -> None:
    r = review("u-1", "longhorn-system")["request"]
    s = scope.LONGHORN_NODE_STATUS
    assert (r["resource"], r["subResource"], r["operation"]) == (
        {"group": s.group, "version": s.version, "resource": s.resource}, s.subresource, "UPDATE")
    assert r["dryRun"] is True and r["object"] == r["oldObject"] and r["object"]["status"] == {"diskStatus": {}}


@pytest.mark.parametrize("answer, wrong", [
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u", "allowed": True}}, ""),
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
      "response": {"uid": "u", "allowed": True}}, "not an admission.k8s.io/v1 AdmissionReview"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "x", "allowed": True}},
     "response.uid"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "response": {"uid": "u", "allowed": False, "status": {"message": "no"}}}, "denied a review that changes nothing: no"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "response": {"uid": "u", "allowed": True, "patchType": "JSONPatch", "patch": "W10="}}, "patched"),
    ([], "not an admission.k8s.io/v1 AdmissionReview"),
])
def test_what_counts_as_an_answer(answer: Any, wrong: str) -> None:
    got = verdict(answer, "u")
    assert (wrong in got and got) if wrong else got == ""


def test_address() -> None:
    assert address("127.0.0.1:9443") == ("127.0.0.1", 9443)
    assert address("[::1]:9443") == ("::1", 9443)
    for bad in ("9443", "host:", "host:0", "host:x", ":80"):
        with pytest.raises(argparse.ArgumentTypeError):
            address(bad)


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(["check-webhook", *argv])
    except SystemExit as exc:  # argparse's usage error, as the console script exits
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    return code, err.strip()


def test_usage_and_configuration_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = one_line_error(["--address", "nowhere"], capsys)
    assert code == 2 and "--address" in err
    code, err = one_line_error(["--kubeconfig", str(tmp_path / "missing")], capsys)
    assert code == 2 and err == f"bimguard check-webhook: stat {tmp_path / 'missing'}: no such file or directory"
    assert "check-webhook" in build_parser().format_help()
    closed = tmp_path / "closed.kubeconfig"  # an API server that is not there
    closed.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
current-context: c
""")
    code, err = one_line_error(["--kubeconfig", str(closed)], capsys)
    assert code == 2 and err.startswith("bimguard check-webhook: cannot reach the API server: "), err


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, Path]]:
    server = ApiServer(namespace_seed=("default", "longhorn-system", "bimguard"))
    await server.start()
    kubeconfig = tmp_path / "kubeconfig"
    server.kubeconfig(kubeconfig)
    yield server, kubeconfig
    await server.stop()


async def test_against_the_api_server_every_failure_is_one_line(api: tuple[ApiServer, Path]) -> None:
    server, kubeconfig = api

    def check(*argv: str) -> tuple[int, str]:
        args = build_parser(("check-webhook",)).parse_args(["check-webhook", "--kubeconfig", str(kubeconfig), *argv])
        out, err = io.StringIO(), io.StringIO()
        code = run(args, out, err)
        assert len((out.getvalue() + err.getvalue()).splitlines()) == 1
        return code, (out.getvalue() + err.getvalue()).strip()

    code, line = await asyncio.to_thread(check, "--webhook-configuration", "absent")
    assert code == 2 and "cannot read mutatingwebhookconfiguration absent: 404 NotFound" in line, line
    mwcs = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    for name, bundle in (("broken", PEM), ("bimguard", _cert_pem(new_ca(datetime.now(timezone.utc), timedelta(days=1)).cert))):
        server.store.create(mwcs, mutating_webhook_configuration(
            name=name, service="bimguard-webhook", namespace="bimguard", longhorn_namespace="longhorn-system",
            ca_bundle=bundle))
    port = free_port()  # nothing listens there
    code, line = await asyncio.to_thread(check, "--webhook-configuration", "broken", "--address", f"127.0.0.1:{port}")
    assert code == 1 and line.startswith("bimguard check-webhook: mutatingwebhookconfiguration broken: caBundle holds "
                                         "no usable PEM certificate: "), line
    code, line = await asyncio.to_thread(check, "--address", f"127.0.0.1:{port}")
    assert code == 1 and line.startswith(f"bimguard check-webhook: https://bimguard-webhook.bimguard.svc:443/mutate: "
                                         f"cannot connect to 127.0.0.1:{port}: "), line
    # Without --address: the Service's name, which resolves only inside a cluster.
    code, line = await asyncio.to_thread(check, "--timeout", "3")
    assert code == 1 and "cannot connect to bimguard-webhook.bimguard.svc:443" in line, line
    server.deny("get", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io")
    code, line = await asyncio.to_thread(check)
    assert code == 2 and "403 Forbidden" in line, line
