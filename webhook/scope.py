"""What the admission webhook is registered for, declared once.

The server routes on it and the chart's MutatingWebhookConfiguration renders the same rules and
matchConditions (templates/_helpers.tpl writes MATCH_CONDITIONS out); `tests/chart/` renders the
chart with real Helm and checks that they agree, and webhook/registration.py builds the same
configuration from here.

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


# --- matchConditions: only writes that first-record a filesystem disk's UUID reach the webhook ---
#
# kube-apiserver evaluates these CEL expressions before it calls the webhook and skips the call
# when one is false, so a routine Node status write (the vast majority) costs no network round
# trip, and none of the `timeoutSeconds` wait while the webhook is unreachable. They only filter:
# the webhook's own trigger (webhook/review.py `no_new_uuid`, bimguard/decision.py
# `first_recorded`) stays authoritative, and tests/webhook/test_match_conditions_corpus.py feeds
# one corpus of reviews to both (the expression evaluated by a real CEL implementation) and
# requires that they agree on every one.
#
# Kubernetes versions (kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/features/
# kube_features.go, AdmissionWebhookMatchConditions: alpha off in 1.27, beta ON BY DEFAULT in
# 1.28, GA and locked on in 1.30; the same stages in kubernetes/website content/en/docs/reference/
# command-line-tools-reference/feature-gates/admission-webhook-match-conditions.md). Older servers
# get the configuration without the field: a 1.27 server with the gate off would drop it, and
# before 1.27 it is an unknown field.
MATCH_CONDITIONS_SINCE = (1, 28)

# The expression is the trigger, clause by clause, over the JSON objects kube-apiserver binds to
# `object` and `oldObject` (the request is registered for UPDATE only, but a null `oldObject`, as
# on CREATE, means "no disk had a UUID"). Longhorn's Go types let `status.diskStatus` and
# `spec.disks` be null (`+nullable`), so every step is guarded with `type(...) == map` before
# `has()`, a field selection or `in` (selecting a field of null is an evaluation error in CEL,
# and comparing a map with null an error in some implementations); with those guards no input
# Longhorn's types can produce makes it fail. Disk names are map keys, so names with `/` or `~`
# need no escaping (only the webhook's JSON Patch escapes them, RFC 6901). `exists` runs over
# `diskStatus` or, when that is not a map, over `{}`: a guard in front of `&&` would do in cel-go,
# which short-circuits, but not in cel-python (the emulator's CEL), which evaluates both sides.
#   - some disk d of object.status.diskStatus has a string diskUUID shaped like a UUID
#     (bimguard.model.UUID_RE; Python's `$` also accepts one trailing newline, hence `\n?`);
#   - its type is filesystem: status diskType if non-empty, else spec.disks[d].diskType, either
#     "" or "filesystem" (DiskType.parse: "block" and unknown types are not v1 disks);
#   - and oldObject has no non-empty string diskUUID for d (absent, null or "").
# No `cel.bind` or optional types: the expression compiles in the CEL environment of every
# Kubernetes version that has matchConditions.
MATCH_CONDITION_NAME = "first-records-a-filesystem-disk-uuid"
MATCH_CONDITION_EXPRESSION = r"""(type(object) == map && has(object.status) && type(object.status) == map
  && has(object.status.diskStatus) && type(object.status.diskStatus) == map
  ? object.status.diskStatus : {}).exists(d,
  type(object.status.diskStatus[d]) == map
  && has(object.status.diskStatus[d].diskUUID) && type(object.status.diskStatus[d].diskUUID) == string
  && object.status.diskStatus[d].diskUUID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\n?$')
  && (has(object.status.diskStatus[d].diskType) && type(object.status.diskStatus[d].diskType) == string
      && object.status.diskStatus[d].diskType != ''
    ? object.status.diskStatus[d].diskType == 'filesystem'
    : !(has(object.spec) && type(object.spec) == map && has(object.spec.disks) && type(object.spec.disks) == map
        && d in object.spec.disks && type(object.spec.disks[d]) == map && has(object.spec.disks[d].diskType)
        && type(object.spec.disks[d].diskType) == string && !(object.spec.disks[d].diskType in ['', 'filesystem'])))
  && !(type(oldObject) == map && has(oldObject.status) && type(oldObject.status) == map
    && has(oldObject.status.diskStatus) && type(oldObject.status.diskStatus) == map
    && d in oldObject.status.diskStatus && type(oldObject.status.diskStatus[d]) == map
    && has(oldObject.status.diskStatus[d].diskUUID) && type(oldObject.status.diskStatus[d].diskUUID) == string
    && oldObject.status.diskStatus[d].diskUUID != ''))"""


@dataclass(frozen=True, slots=True)
class MatchCondition:
    name: str
    expression: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "expression": self.expression}


MATCH_CONDITIONS = (MatchCondition(MATCH_CONDITION_NAME, MATCH_CONDITION_EXPRESSION),)
