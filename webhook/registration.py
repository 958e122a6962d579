"""The MutatingWebhookConfiguration, built from the declared scope (webhook/scope.py).

The Helm chart writes the same fields in its template (tests/chart checks that they agree);
this builder is what the demo and the tests install into the emulator.
"""

from __future__ import annotations

import base64
from typing import Any

from webhook import scope


def mutating_webhook_configuration(*, name: str, service: str, namespace: str, longhorn_namespace: str,
                                   ca_bundle: bytes = b"", port: int = 443,
                                   failure_policy: str = scope.FAILURE_POLICY) -> dict[str, Any]:
    s = scope.LONGHORN_NODE_STATUS
    client_config: dict[str, Any] = {"service": {"name": service, "namespace": namespace, "path": s.path, "port": port}}
    if ca_bundle:
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode()
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "bimguard"}},
        "webhooks": [{
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
        }],
    }
