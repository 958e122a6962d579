"""The chart's webhook configuration against an API server (the emulator, bimguard/sim): real
kubectl applies it and the server's validation accepts it; and a `helm upgrade` render, with
Helm's `lookup` reading the live object, keeps the caBundle the webhook's leader injected."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import helm_python as helm
import pytest
import yaml

from bimguard.sim.apiserver import ApiServer
from tests.kubectl import kubectl_path
from webhook import scope

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
KUBECTL = kubectl_path()  # the test extra's: missing, the tests fail (never skip)
RELEASE, NS = "bg", "bimguard-system"
MWC_TEMPLATE = "bimguard/templates/mutatingwebhookconfiguration.yaml"
MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="  # what the leader would have written


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    server = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(api: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    api.kubeconfig(path)
    return path


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *args], input=input,
                          capture_output=True, text=True, timeout=60)


def render_offline(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NS, is_install=True)[MWC_TEMPLATE]


def render_upgrade(kubeconfig: Path, values: dict[str, Any] | None = None) -> str:
    """Like `helm upgrade`: cluster-aware, so `lookup` sees the live objects."""
    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=NS) as cfg, helm.Chart.load(CHART) as chart:
        return cfg.render(chart, values or {}, name=RELEASE, namespace=NS, is_upgrade=True)[MWC_TEMPLATE]


@pytest.mark.parametrize("values", [{}, {"tls": {"mode": "files", "secretName": "cert", "caBundle": CA}}],
                         ids=["selfManaged", "files"])
async def test_api_server_accepts_the_webhook_configuration(api: ApiServer, kubeconfig: Path,
                                                            values: dict[str, Any]) -> None:
    manifest = render_offline(values)
    p = await asyncio.to_thread(kubectl, kubeconfig, "apply", "-f", "-", input=manifest)
    assert p.returncode == 0, p.stderr
    name = yaml.safe_load(manifest)["metadata"]["name"]
    stored = api.store.get(MWC, "", name)
    assert stored["webhooks"][0]["name"] == scope.WEBHOOK_NAME
    assert stored["webhooks"][0]["rules"][0]["resources"] == [scope.LONGHORN_NODE_STATUS.rule_resource]


async def test_upgrade_keeps_the_injected_ca_bundle(api: ApiServer, kubeconfig: Path) -> None:
    manifest = render_offline()
    assert "caBundle" not in manifest  # a fresh install has none: the leader injects it
    p = await asyncio.to_thread(kubectl, kubeconfig, "apply", "-f", "-", input=manifest)
    assert p.returncode == 0, p.stderr
    name = yaml.safe_load(manifest)["metadata"]["name"]

    # The leader's injection: a patch of the one webhook's clientConfig.caBundle.
    patch = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": CA}]
    p = await asyncio.to_thread(kubectl, kubeconfig, "patch", "mutatingwebhookconfiguration", name,
                                "--type=json", "-p", json.dumps(patch))
    assert p.returncode == 0, p.stderr

    upgraded = await asyncio.to_thread(render_upgrade, kubeconfig)
    (hook,) = yaml.safe_load(upgraded)["webhooks"]
    assert hook["clientConfig"]["caBundle"] == CA

    # Applying the upgrade's manifest leaves the injected CA in place.
    p = await asyncio.to_thread(kubectl, kubeconfig, "apply", "-f", "-", input=upgraded)
    assert p.returncode == 0, p.stderr
    assert api.store.get(MWC, "", name)["webhooks"][0]["clientConfig"]["caBundle"] == CA


async def test_upgrade_without_a_live_object_renders_no_ca_bundle(kubeconfig: Path) -> None:
    upgraded = await asyncio.to_thread(render_upgrade, kubeconfig)
    assert "caBundle" not in yaml.safe_load(upgraded)["webhooks"][0]["clientConfig"]
