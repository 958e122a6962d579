"""The MutatingWebhookConfiguration, built from the declared scope (webhook/scope.py).

The Helm chart writes the same fields in its template (tests/chart checks that they agree);
this builder is what the demo and the tests install into the emulator.

Why the webhook only ever sees `longhorn.io/v1beta2` Nodes. Longhorn v1.7 and v1.8 still serve
`nodes.longhorn.io` as v1beta1 besides v1beta2 (the storage version), converted by Longhorn's
conversion webhook (`spec.conversion.strategy: Webhook`); v1.9.0 and v1.9.1 no longer serve
v1beta1 (bimguard/sim/data/longhorn-crds-*.yaml). The rule names v1beta2 only, with
`matchPolicy: Equivalent`: kube-apiserver converts a write made through v1beta1 to v1beta2 before
calling the webhook (the AdmissionReview's `resource` and `kind` are v1beta2; `requestResource`
and `requestKind` name v1beta1) and applies the returned patch to that v1beta2 object
(Kubernetes API reference, admissionregistration.k8s.io/v1 MutatingWebhook `matchPolicy`). So a
v1beta1 object, with its map-shaped conditions, never reaches webhook/review.py. Nor does
Longhorn write node status through v1beta1: longhorn-manager's status writes all go through
v1beta2 (datastore/longhorn.go:2703 `UpdateNodeStatus`, upgrade/util/util.go:1118 @v1.7.2); its
only v1beta1 Node writes are spec updates of the v1beta1 upgrade path (upgrade/v1beta1/
upgrade.go:168), on the main resource, which a `nodes/status` rule does not match. Only another
client could write nodes/status through v1beta1, and its write arrives converted as above.

matchConditions (scope.MATCH_CONDITIONS) are rendered for servers that have them on by default,
Kubernetes 1.28 and later (scope.MATCH_CONDITIONS_SINCE): `kube_version` is what the server's
`/version` says (`server_version()` reads it; `for_server()` does both). Without a version the
builder assumes a current server and renders them; a version it cannot read gets the older form,
which every server accepts (the webhook's own trigger decides either way; matchConditions only
spare routine writes the round trip).

A chart rendered for an older server has no matchConditions, and a later Kubernetes upgrade does
not add them. The webhook's leader does (`keep_match_conditions`): when the server it talks to has
them on by default and bimguard's webhook in the configuration has none, it adds the declared ones,
never changing any that are there (an operator's edit, or a newer chart's, wins).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from webhook import scope

log = logging.getLogger("bimguard.registration")

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)")
_NUMBER_RE = re.compile(r"^(\d+)")


def kube_version_tuple(version: str | Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(major, minor) of a server version: a `/version` document (its `gitVersion`, what Helm's
    `.Capabilities.KubeVersion` holds, else its `major`/`minor`, which may carry a `+` as on GKE
    and EKS) or a version string such as "v1.30.2+k3s1" or "1.28.0-gke.100"; None when it
    cannot be read."""
    if version is None:
        return None
    if isinstance(version, Mapping):
        m = _VERSION_RE.match(str(version.get("gitVersion") or "").strip())
        if m:
            return int(m[1]), int(m[2])
        major = _NUMBER_RE.match(str(version.get("major") or ""))
        minor = _NUMBER_RE.match(str(version.get("minor") or ""))
        return (int(major[1]), int(minor[1])) if major and minor else None
    m = _VERSION_RE.match(version.strip())
    return (int(m[1]), int(m[2])) if m else None


def supports_match_conditions(version: str | Mapping[str, Any] | None) -> bool:
    """Whether to render matchConditions for a server of this version (None: assume a current one)."""
    if version is None:
        return True
    parsed = kube_version_tuple(version)
    return parsed is not None and parsed >= scope.MATCH_CONDITIONS_SINCE


async def server_version(api_client: client.ApiClient) -> dict[str, Any]:
    """The API server's `/version` document (major, minor, gitVersion...)."""
    info = await client.VersionApi(api_client).get_code()
    return {"major": info.major, "minor": info.minor, "gitVersion": info.git_version}


def mutating_webhook_configuration(*, name: str, service: str, namespace: str, longhorn_namespace: str,
                                   ca_bundle: bytes = b"", port: int = 443,
                                   failure_policy: str = scope.FAILURE_POLICY,
                                   kube_version: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    s = scope.LONGHORN_NODE_STATUS
    client_config: dict[str, Any] = {"service": {"name": service, "namespace": namespace, "path": s.path, "port": port}}
    if ca_bundle:
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode()
    hook: dict[str, Any] = {
        "name": scope.WEBHOOK_NAME,
        "admissionReviewVersions": list(scope.ADMISSION_REVIEW_VERSIONS),
        "sideEffects": scope.SIDE_EFFECTS,
        "failurePolicy": failure_policy,
        "timeoutSeconds": scope.TIMEOUT_SECONDS,
        "matchPolicy": "Equivalent",
        "clientConfig": client_config,
        "rules": [{"apiGroups": [s.group], "apiVersions": [s.version], "resources": [s.rule_resource],
                   "operations": list(s.operations), "scope": "Namespaced"}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": longhorn_namespace}},
    }
    if supports_match_conditions(kube_version):
        hook["matchConditions"] = [c.as_dict() for c in scope.MATCH_CONDITIONS]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "bimguard"}},
        "webhooks": [hook],
    }


async def for_server(api_client: client.ApiClient, **kwargs: Any) -> dict[str, Any]:
    """The configuration for the server behind `api_client`: matchConditions when its `/version`
    says it has them on by default."""
    return mutating_webhook_configuration(kube_version=await server_version(api_client), **kwargs)


async def ensure_match_conditions(api_client: client.ApiClient, mwc_name: str) -> bool:
    """Add scope.MATCH_CONDITIONS to bimguard's webhook in the configuration when the server has
    them on by default and the webhook has none. True if it patched (a resourceVersion-tested
    JSON Patch, `certs.patch_webhooks`)."""
    from webhook.certs import patch_webhooks

    if not supports_match_conditions(await server_version(api_client)):
        return False
    want = [c.as_dict() for c in scope.MATCH_CONDITIONS]

    def changes(i: int, hook: dict[str, Any]) -> list[dict[str, Any]]:
        if hook.get("name") != scope.WEBHOOK_NAME or hook.get("matchConditions"):
            return []
        return [{"op": "add", "path": f"/webhooks/{i}/matchConditions", "value": want}]

    if not await patch_webhooks(api_client, mwc_name, changes, "matchConditions"):
        return False
    log.info("matchConditions added to MutatingWebhookConfiguration %s: the server has them on by default now",
             mwc_name)
    return True


async def keep_match_conditions(api_client: client.ApiClient, mwc_name: str, interval: float = 600.0) -> None:
    """The leader's loop: `ensure_match_conditions` every `interval` seconds until cancelled (a
    Kubernetes upgrade is rare; the first check is at once). Failures are logged and retried."""
    from webhook.certs import ApiFailure

    while True:
        try:
            await ensure_match_conditions(api_client, mwc_name)
        except Exception as e:  # noqa: BLE001 - the loop must survive; an API body may echo objects: status only
            log.warning("cannot check matchConditions of MutatingWebhookConfiguration %s: %s", mwc_name,
                        e if isinstance(e, (ApiFailure, RuntimeError)) else type(e).__name__)
        await asyncio.sleep(interval)
