"""What the admission webhook is registered for, declared once.

The server routes on it and the chart's MutatingWebhookConfiguration renders the same rules;
`tests/chart/` renders the chart with real Helm and checks that they agree.

Longhorn's own node mutator/validator register `nodes` CREATE/UPDATE without subresources
(lm v1.7.2 webhook/resources/node/mutator.go, validator.go `Resource()`); a rule for
`nodes/status` does not overlap them (BRIEF §6). Status writes are where longhorn-manager first
records a disk UUID (BRIEF §1.5), so that is the only place to intervene.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scope:
    group: str
    version: str
    resource: str
    subresource: str
    operations: tuple[str, ...]
    path: str  # where the server serves reviews for this scope

    @property
    def rule_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


LONGHORN_NODE_STATUS = Scope(
    group="longhorn.io",
    version="v1beta2",
    resource="nodes",
    subresource="status",
    operations=("UPDATE",),
    path="/mutate",
)

# The webhook configuration's fixed settings (DESIGN invariant 1: never block Longhorn).
WEBHOOK_NAME = "disk-uuid-prefix.bimguard.io"
FAILURE_POLICY = "Ignore"
SIDE_EFFECTS = "NoneOnDryRun"
TIMEOUT_SECONDS = 5
ADMISSION_REVIEW_VERSIONS = ("v1",)
