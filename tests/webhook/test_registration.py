"""webhook/registration.py: which Kubernetes versions get matchConditions (>= 1.28, where the
AdmissionWebhookMatchConditions gate is on by default), read as Helm reads them."""

from __future__ import annotations

import pytest

from webhook import registration, scope


@pytest.mark.parametrize("version, parsed", [
    ("v1.28.0", (1, 28)), ("1.30.2+k3s1", (1, 30)), ("v1.29.1-gke.1589018", (1, 29)), (" v1.27.16-eks-a5ec690", (1, 27)),
    ({"gitVersion": "v1.31.0", "major": "1", "minor": "27"}, (1, 31)),  # gitVersion first, as Helm's KubeVersion
    ({"major": "1", "minor": "28+"}, (1, 28)),  # EKS/GKE minor with a plus, no gitVersion
    ({"gitVersion": "weird", "major": "1", "minor": "29"}, (1, 29)),
    ("latest", None), ({}, None), (None, None),
])
def test_versions_are_read_like_helm_reads_them(version, parsed) -> None:
    assert registration.kube_version_tuple(version) == parsed


@pytest.mark.parametrize("version, expected", [
    (None, True),  # not given: a current server
    ("v1.27.16", False), ("v1.28.0", True), ("v1.33.1", True),
    ("unreadable", False),  # the older form, which every server accepts
])
def test_match_conditions_from_1_28(version, expected) -> None:
    assert scope.MATCH_CONDITIONS_SINCE == (1, 28)
    assert registration.supports_match_conditions(version) is expected
    hook = registration.mutating_webhook_configuration(name="n", service="s", namespace="ns",
                                                       longhorn_namespace="longhorn-system",
                                                       kube_version=version)["webhooks"][0]
    assert ("matchConditions" in hook) is expected
    if expected:
        assert hook["matchConditions"] == [{"name": scope.MATCH_CONDITION_NAME,
                                            "expression": scope.MATCH_CONDITION_EXPRESSION}]
