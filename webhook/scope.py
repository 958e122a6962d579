"""What the admission webhook is registered for, declared once.

The server routes on it and the chart's MutatingWebhookConfiguration renders the same rules and
matchConditions (templates/_helpers.tpl writes MATCH_CONDITIONS out); `tests/chart/` renders the
chart with real Helm and checks that they agree, and webhook/registration.py builds the same
configuration from here.

Longhorn's own node mutator/validator register `nodes` CREATE/UPDATE without subresources
(`Resource()`, webhook/resources/node/mutator.go:31-43 and validator.go:33-45 @v1.7.2; the rules
are built from them in webhook/server/server.go:244 @v1.7.2). A webhook rule matches a subresource
only when it names it (Kubernetes admissionregistration.k8s.io/v1 `RuleWithOperations.resources`:
"'pods' means pods. 'pods/log' means the log subresource of pods"), so a rule for `nodes/status`
does not overlap them. Status writes are where longhorn-manager first records a disk UUID
(`UpdateNodeStatus`, a PUT of .../nodes/<name>/status, datastore/longhorn.go:2702 @v1.7.2), so
that is the only place to intervene.
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

# The webhook configuration's fixed settings (docs/design.md, invariant 1: never block Longhorn).
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
# on CREATE, means "no disk had a UUID"):
#   - `old`, `spec`, `status`: oldObject.status.diskStatus, object.spec.disks and
#     object.status.diskStatus, each `{}` when absent or not a map (Longhorn's Go types let them
#     be null, `+nullable`). A one-element list's `exists` binds them: `cel.bind` is not in every
#     Kubernetes CEL environment that has matchConditions;
#   - for some disk d of `status` (entry `e`), unless `old` has a non-empty string diskUUID for d
#     (absent, null or "" in oldObject: first-record),
#   - `e` has a string diskUUID shaped like a UUID (bimguard.model.UUID_RE; Python's `$` also
#     accepts one trailing newline, hence `\n?`),
#   - and the disk is a filesystem disk: e.diskType if a non-empty string, else
#     spec[d].diskType, either "" or "filesystem" (DiskType.parse: "block" and unknown types are
#     not v1 disks).
# Every step is guarded (`type(...) == map` before `has()`, a field or an index): selecting a field
# of null is an evaluation error in CEL and comparing a map with null one in cel-cpp, so no input
# Longhorn's types can produce makes the expression fail. Disk names are map keys: names with `/`
# or `~` need no escaping (only the webhook's JSON Patch escapes them, RFC 6901). "unless old has
# a UUID" is a conditional (`? false :`), not `!... &&`: equal in cel-go, which short-circuits
# `&&`, but cel-python evaluates both sides of `&&` and only one branch of `?:`, and a routine
# write (every disk already has its UUID) then costs it a third of the work (the emulator runs
# this for every Node status write).
MATCH_CONDITION_NAME = "first-records-a-filesystem-disk-uuid"
MATCH_CONDITION_EXPRESSION = r"""[type(oldObject) == map && has(oldObject.status) && type(oldObject.status) == map
  && has(oldObject.status.diskStatus) && type(oldObject.status.diskStatus) == map
  ? oldObject.status.diskStatus : {}].exists(old,
[type(object) == map && has(object.spec) && type(object.spec) == map
  && has(object.spec.disks) && type(object.spec.disks) == map
  ? object.spec.disks : {}].exists(spec,
[type(object) == map && has(object.status) && type(object.status) == map
  && has(object.status.diskStatus) && type(object.status.diskStatus) == map
  ? object.status.diskStatus : {}].exists(status,
status.exists(d, [status[d]].exists(e,
  d in old && type(old[d]) == map && has(old[d].diskUUID) && type(old[d].diskUUID) == string
    && old[d].diskUUID != ''
  ? false
  : type(e) == map && has(e.diskUUID) && type(e.diskUUID) == string
    && e.diskUUID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\n?$')
    && (has(e.diskType) && type(e.diskType) == string && e.diskType != ''
      ? e.diskType == 'filesystem'
      : !(d in spec && type(spec[d]) == map && has(spec[d].diskType) && type(spec[d].diskType) == string
          && !(spec[d].diskType in ['', 'filesystem']))))))))"""


@dataclass(frozen=True, slots=True)
class MatchCondition:
    name: str
    expression: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "expression": self.expression}


MATCH_CONDITIONS = (MatchCondition(MATCH_CONDITION_NAME, MATCH_CONDITION_EXPRESSION),)
