"""`helm test`: the chart's test Pod (templates/tests/) run for real against the emulator.

The release is applied with real kubectl to the emulated API server; the webhook runs as a process
with the arguments the chart's Deployment gives it (plus local ports); the test Pod's spec, as
rendered, is run by the simulated kubelet as the Pod's ServiceAccount, in the release namespace
enforcing Pod Security `restricted`. The only addition to its command is `--address`: the
emulator has no cluster DNS, so the Pod is told where `<service>.<namespace>.svc` listens
(the certificate is still verified for that name).

- selfManaged: the webhook's leader injects its CA and the check passes; with a caBundle of
  another CA (the leader stopped, so that it does not put its own back) or none it fails in one
  line, exit 1;
- certManager: the test plays cert-manager (issues the rendered Certificate's names from a CA into
  its Secret) and its CA injector (the annotation's Certificate's ca.crt into caBundle): it passes;
  with another CA injected it fails;
- the ServiceMonitor's way of scraping (metrics.tls + authorization) reaches a running webhook's
  /metrics and finds every series the PrometheusRule's alerts use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.test_jobs_in_sim import Env, Manifest, bare_env, exit_code, find, kubectl, render
from tests.chart.test_prometheus_rule import exported
from tests.webhook.test_process import free_port
from webhook.certs import _cert_pem, _key_pem, issue_serving, new_ca

RELEASE, NS, LH_NS = "bg", "bimguard-system", "longhorn-system"
BIN = Path(sys.executable).parent
MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# What `helm install` leaves for the test Pod and the webhook (hooks and workloads are run by hand).
INSTALLED = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Service",
             "MutatingWebhookConfiguration")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """The emulated API server with the release namespace (enforcing `restricted`) and the CRDs."""
    async with bare_env(tmp_path) as env:
        yield env


class Webhook:
    """`bimguard webhook` with the rendered Deployment's arguments, on local ports."""

    def __init__(self, env: Env, docs: list[Manifest], *extra: str, mounts: dict[str, Path] | None = None) -> None:
        self.env, self.port, self.metrics_port = env, free_port(), free_port()
        args = [a for a in find(docs, "Deployment", f"{RELEASE}-bimguard")["spec"]["template"]["spec"]["containers"][0]
                ["args"] if not a.startswith(("--port=", "--metrics-port=", "--shutdown-delay="))]
        for mount, real in (mounts or {}).items():  # the kubelet's volume mounts, by hand
            args = [a.replace(mount, str(real)) for a in args]
        self.argv = [str(BIN / "bimguard"), *args, *extra, "--kubeconfig", str(env.kubeconfig), "--host", "127.0.0.1",
                     f"--port={self.port}", f"--metrics-port={self.metrics_port}", "--shutdown-delay=0"]
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Webhook:
        env = {**os.environ, "POD_NAME": f"{RELEASE}-bimguard-0", "POD_NAMESPACE": NS}
        self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL, env=env)
        for _ in range(200):  # serving once its port takes connections
            assert self.proc.returncode is None, "the webhook exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return self
        raise AssertionError("the webhook never listened")

    async def __aexit__(self, *_: Any) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def until(predicate: Any, timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ca_bundle(env: Env, name: str) -> str:
    return (env.api.store.get(MWC, "", name)["webhooks"][0]["clientConfig"].get("caBundle") or "")


async def set_ca_bundle(env: Env, name: str, bundle: bytes | None) -> None:
    """What an injector (or an operator) does to the webhook configuration."""
    op = {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": base64.b64encode(bundle).decode()} \
        if bundle is not None else {"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}
    p = await kubectl(env.kubeconfig, "patch", "mutatingwebhookconfiguration", name, "--type=json", "-p",
                      json.dumps([op]))
    assert p.returncode == 0, p.stderr


def foreign_ca() -> bytes:
    return _cert_pem(new_ca(datetime.now(timezone.utc), timedelta(days=1), "somebody else's CA").cert)


async def helm_test(env: Env, docs: list[Manifest], webhook: Webhook) -> tuple[int, list[str]]:
    """The rendered test Pod, run as its ServiceAccount; its exit code and log lines. Its RBAC
    allowed everything it did."""
    pod = find(docs, "Pod", f"{RELEASE}-bimguard-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    template = json.loads(json.dumps({"metadata": pod["metadata"], "spec": pod["spec"]}))
    template["spec"]["containers"][0]["args"].append(f"--address=127.0.0.1:{webhook.port}")
    done, audit = await env.run_audited(template, pod["metadata"]["name"], timeout=20)
    assert audit.seen and audit.denied_by(docs, template["spec"]["serviceAccountName"]) == []
    return exit_code(done), done["logs"].splitlines()


# -- the tests --------------------------------------------------------------------------------------------------

async def test_helm_test_passes_with_the_leaders_ca_and_fails_with_another(env: Env) -> None:
    docs = render({})
    await env.apply([d for d in docs if d["kind"] in INSTALLED])
    mwc = find(docs, "MutatingWebhookConfiguration", f"{RELEASE}-bimguard-{NS}")["metadata"]["name"]
    assert not ca_bundle(env, mwc)
    pod = find(docs, "Pod", f"{RELEASE}-bimguard-test")
    c = pod["spec"]["containers"][0]
    assert (c["image"], c["command"], c["args"]) == ("ghcr.io/bimguard/bimguard:0.1.0", ["bimguard"],
                                                     ["check-webhook", f"--webhook-configuration={mwc}"])

    async with Webhook(env, docs) as webhook:
        await until(lambda: ca_bundle(env, mwc), 20, "the leader to inject its CA")
        code, log = await helm_test(env, docs, webhook)
    assert code == 0, log
    assert len(log) == 1 and "verified with the caBundle of mutatingwebhookconfiguration" in log[0], log
    assert f"https://{RELEASE}-bimguard.{NS}.svc:443/mutate" in log[0]

    # The leader would put its CA back: this webhook only answers.
    async with Webhook(env, docs, "--no-controller") as webhook:
        await set_ca_bundle(env, mwc, foreign_ca())
        code, log = await helm_test(env, docs, webhook)
        assert code == 1 and len(log) == 1, log
        assert log[0].startswith("bimguard check-webhook: ") and "does not verify against the caBundle" in log[0], log

        await set_ca_bundle(env, mwc, None)
        code, log = await helm_test(env, docs, webhook)
        assert code == 1 and len(log) == 1, log
        assert "system trust roots" in log[0] and "has no caBundle" in log[0], log


async def test_helm_test_with_cert_manager_tls(env: Env, tmp_path: Path) -> None:
    docs = render({"tls": {"mode": "certManager"}})
    await env.apply([d for d in docs if d["kind"] in INSTALLED])
    mwc = find(docs, "MutatingWebhookConfiguration", f"{RELEASE}-bimguard-{NS}")
    serving = find(docs, "Certificate", f"{RELEASE}-bimguard-serving")

    # cert-manager: the CA chain's CA issues the Certificate's names into its Secret, which the
    # Deployment mounts (here: a directory the webhook is pointed at, as the kubelet would).
    ca = new_ca(datetime.now(timezone.utc), timedelta(days=30), f"{RELEASE}-bimguard-ca")
    cert, key = issue_serving(ca, tuple(serving["spec"]["dnsNames"]), datetime.now(timezone.utc), timedelta(days=1))
    mount = tmp_path / "tls"
    mount.mkdir()
    for name, data in (("tls.crt", _cert_pem(cert)), ("tls.key", _key_pem(key)), ("ca.crt", _cert_pem(ca.cert))):
        (mount / name).write_bytes(data)
    pod = find(docs, "Deployment", f"{RELEASE}-bimguard")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == serving["spec"]["secretName"]
    (tls_mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]

    # Its CA injector: the annotated Certificate's ca.crt into caBundle.
    namespace, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert (namespace, name) == (NS, serving["metadata"]["name"])
    await set_ca_bundle(env, mwc["metadata"]["name"], (mount / "ca.crt").read_bytes())

    async with Webhook(env, docs, mounts={tls_mount["mountPath"]: mount}) as webhook:
        code, log = await helm_test(env, docs, webhook)
        assert code == 0 and len(log) == 1, log
        await set_ca_bundle(env, mwc["metadata"]["name"], foreign_ca())
        code, log = await helm_test(env, docs, webhook)
        assert code == 1 and len(log) == 1 and "does not verify against the caBundle" in log[0], log


async def test_the_service_monitors_scrape_reaches_every_series_the_alerts_use(env: Env) -> None:
    values = {"metrics": {"tls": True, "authorization": True, "serviceMonitor": {"enabled": True},
                          "prometheusRule": {"enabled": True}}}
    docs = render(values)
    await env.apply([d for d in docs if d["kind"] in INSTALLED])
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    mwc = find(docs, "MutatingWebhookConfiguration", f"{RELEASE}-bimguard-{NS}")["metadata"]["name"]
    # Prometheus' ServiceAccount token, which the webhook reviews with the API server.
    token = secrets.token_hex(16)
    env.api.add_user(token, "system:serviceaccount:monitoring:prometheus")

    async with Webhook(env, docs) as webhook:
        await until(lambda: ca_bundle(env, mwc), 20, "the leader to inject its CA")
        secret = env.api.store.get("v1/secrets", NS, endpoint["tlsConfig"]["ca"]["secret"]["name"])
        ctx = ssl.create_default_context(
            cadata=base64.b64decode(secret["data"][endpoint["tlsConfig"]["ca"]["secret"]["key"]]).decode())
        assert endpoint["scheme"] == "https" and endpoint["bearerTokenFile"]

        async def scrape() -> str:
            async with aiohttp.ClientSession() as s, s.get(
                    f"https://127.0.0.1:{webhook.metrics_port}{endpoint['path']}", ssl=ctx,
                    server_hostname=endpoint["tlsConfig"]["serverName"],
                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
                return await r.text()

        def series(text: str) -> set[str]:
            return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

        # The collision groups once the index synced; the unfinished records after the leader's first pass.
        seen: set[str] = set()
        for _ in range(100):
            seen = series(await scrape())
            if {"bimguard_collision_groups", "bimguard_rewrites_unfinished"} <= seen:
                break
            await asyncio.sleep(0.2)
    used = {name for r in rule["spec"]["groups"][0]["rules"] for name in re.findall(r"\bbimguard_[a-z_]+\b", r["expr"])}
    assert used <= exported()
    # A labelled counter has no sample until it first counts (nothing was let through unchecked).
    assert used - seen == {"bimguard_admission_skipped_total"}, used - seen
