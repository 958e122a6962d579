"""The chart's matchConditions: the scope's (webhook/scope.py) on Kubernetes >= 1.28, none before,
whether the version comes from `--kube-version` (offline) or from the cluster's `/version`
(`helm install`, here a server-side dry run against the emulator); the same choice as the self-managed
registration (webhook/registration.py) makes for the same version."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import helm_python as helm
import pytest
import yaml
from helm_python import _native  # render options the Python wrapper does not expose

from bimguard.sim import openapi
from bimguard.sim.apiserver import ApiServer
from webhook import registration, scope

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
RELEASE, NS = "bg", "bimguard-system"
MWC_TEMPLATE = "bimguard/templates/mutatingwebhookconfiguration.yaml"
CONDITIONS = [c.as_dict() for c in scope.MATCH_CONDITIONS]


def hook_for(kube_version: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """`helm template --kube-version <kube_version>`: helm-c-sdk's render options carry it."""
    opts = {"name": RELEASE, "namespace": NS, "is_install": True, "kube_version": kube_version}
    with helm.Chart.load(CHART) as chart:
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    (hook,) = yaml.safe_load(out[MWC_TEMPLATE])["webhooks"]
    return hook


@pytest.mark.parametrize("kube_version, expected", [
    ("v1.25.0", False), ("v1.26.15", False),
    ("v1.27.16", False),  # alpha, off by default: a 1.27 server would drop the field
    ("v1.28.0", True),  # beta, on by default
    ("v1.28.3-eks-a5ec690", True), ("v1.29.1-gke.1589018", True), ("v1.30.2+k3s1", True),  # GA from 1.30
    ("v1.33.0", True),
])
def test_match_conditions_follow_the_kubernetes_version(kube_version: str, expected: bool) -> None:
    hook = hook_for(kube_version)
    assert (hook.get("matchConditions") == CONDITIONS) is expected
    assert ("matchConditions" in hook) is expected
    # The self-managed registration decides the same for the same server.
    assert registration.supports_match_conditions({"gitVersion": kube_version}) is expected
    built = registration.mutating_webhook_configuration(name="x", service="s", namespace=NS,
                                                        longhorn_namespace="longhorn-system",
                                                        kube_version=kube_version)["webhooks"][0]
    assert built.get("matchConditions") == hook.get("matchConditions")
    # Everything else is the same with and without them.
    rest = {k: v for k, v in hook.items() if k != "matchConditions"}
    assert rest == {k: v for k, v in hook_for("v1.33.0").items() if k != "matchConditions"}


def test_the_expression_is_a_block_scalar_of_the_scope_text() -> None:
    # Written out by hand in _helpers.tpl: any drift from webhook/scope.py shows here (and in
    # test_chart.py), including whitespace and the regex's escaping.
    (cond,) = hook_for("v1.30.0")["matchConditions"]
    assert cond["name"] == scope.MATCH_CONDITION_NAME
    assert cond["expression"] == scope.MATCH_CONDITION_EXPRESSION
    assert "\\\\n?$" in cond["expression"]  # CEL '\\n' -> RE2 \n (Python's $ before a final newline)


def test_lint_is_clean_on_old_and_new_clusters() -> None:
    for kube_version in ("v1.25.0", "v1.28.0", "v1.33.0"):
        report = helm.lint(CHART, {}, strict=True, namespace=NS, kube_version=kube_version)
        assert report["errors"] == [], kube_version
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], kube_version


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    server = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await server.start()
    yield server
    await server.stop()


def install_dry_run(kubeconfig: Path) -> dict[str, Any]:
    """`helm install --dry-run=server`: .Capabilities.KubeVersion is the server's /version (an
    offline render, or a client dry run, would use Helm's default instead)."""
    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=NS) as cfg, helm.Chart.load(CHART) as chart:
        release = cfg.install(chart, RELEASE, {}, namespace=NS, dry_run="server")
    (mwc,) = [d for d in yaml.safe_load_all(release["manifest"]) if d and d["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = mwc["webhooks"]
    return hook


@pytest.mark.parametrize("git_version, expected", [("v1.27.9", False), ("v1.28.1", True), (openapi.SERVER_VERSION, True)])
async def test_helm_install_and_the_registration_read_the_server_version(
        api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, git_version: str, expected: bool) -> None:
    monkeypatch.setattr(openapi, "SERVER_VERSION", git_version)  # what the emulator's /version says
    kubeconfig = tmp_path / "kubeconfig"
    api.kubeconfig(kubeconfig)
    hook = await asyncio.to_thread(install_dry_run, kubeconfig)
    assert ("matchConditions" in hook) is expected

    from bimguard.kube import api_client

    client = await api_client(str(kubeconfig))
    try:
        version = await registration.server_version(client)
        assert version["gitVersion"] == git_version
        built = await registration.for_server(client, name="x", service="s", namespace=NS,
                                              longhorn_namespace="longhorn-system")
    finally:
        await client.close()
    assert built["webhooks"][0].get("matchConditions") == hook.get("matchConditions")


async def test_the_leader_adds_match_conditions_once_the_cluster_has_them(
        api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed on 1.27 (the older form), the cluster upgraded to 1.30: `ensure_match_conditions`
    adds the declared ones; it never touches an older server's configuration or an operator's own."""
    from kubernetes_asyncio import client as k8s

    from bimguard.kube import api_client

    kubeconfig = tmp_path / "kubeconfig"
    api.kubeconfig(kubeconfig)
    kube = await api_client(str(kubeconfig))
    mwcs = k8s.AdmissionregistrationV1Api(kube)

    async def live() -> dict[str, Any]:
        return kube.sanitize_for_serialization(await mwcs.read_mutating_webhook_configuration("x"))["webhooks"][0]

    try:
        monkeypatch.setattr(openapi, "SERVER_VERSION", "v1.27.9")
        await mwcs.create_mutating_webhook_configuration(await registration.for_server(
            kube, name="x", service="s", namespace=NS, longhorn_namespace="longhorn-system"))
        assert "matchConditions" not in await live()
        assert await registration.ensure_match_conditions(kube, "x") is False
        assert "matchConditions" not in await live()

        monkeypatch.setattr(openapi, "SERVER_VERSION", "v1.30.4")
        assert await registration.ensure_match_conditions(kube, "x") is True
        assert (await live())["matchConditions"] == [c.as_dict() for c in scope.MATCH_CONDITIONS]
        assert await registration.ensure_match_conditions(kube, "x") is False  # nothing more to do

        own = [{"name": "operator", "expression": "true"}]
        await mwcs.patch_mutating_webhook_configuration(
            "x", [{"op": "replace", "path": "/webhooks/0/matchConditions", "value": own}],
            _content_type="application/json-patch+json")
        assert await registration.ensure_match_conditions(kube, "x") is False
        assert (await live())["matchConditions"] == own
    finally:
        await kube.close()
