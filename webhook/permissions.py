"""Every call the webhook process makes to the API server, as RBAC sees it.

`permissions(...)` lists them as (verb, API group, resource, where, object name): where is "lh"
(Longhorn's namespace), "own" (bimguard's: records, claims, Lease, TLS Secret), "pods" (the
rewriter namespace) or "cluster"; the name is "" for any object, or one of the placeholders
below for an object the process is told by a flag. The chart's webhook RBAC grants exactly these
(tests/chart/test_chart.py compares the rendered rules with this list both ways), and
tests/webhook/test_permissions.py runs the webhook against the emulator and fails on any request it
sends that this list does not name -- so a grant the code stops using, or a call the code starts
making, fails a test. What makes each call:

- the index (webhook/index.py): list+watch of Longhorn's objects and of the PrefixClaims;
- the admission path (webhook/admission.py, webhook/records_api.py): claims created, read, taken
  over (update) and released; records created, read, their status written; Events;
- the rewrite controller and engine (webhook/controller.py, bimguard/rewrite/engine.py): records
  listed, watched and read, their status written; claims listed and deleted;
  a Longhorn Node read (its disk, the disk path check) and its status rolled back (patch); the
  data checks list replicas, BIMs, backing images and nodes; rewriter pods created, watched,
  read, listed and deleted;
- leader election (webhook/leader.py): the Lease created, read and renewed;
- certificates (webhook/certs.py): the self-managed TLS Secret created, read and updated; the
  MutatingWebhookConfiguration read, and patched when the leader injects the caBundle;
- with `--metrics-authorization` (webhook/scrape_access.py): TokenReviews and SubjectAccessReviews.
"""

from __future__ import annotations

Permission = tuple[str, str, str, str, str]

#: Placeholders for names given on the command line.
LEASE = "<lease-name>"
TLS_SECRET = "<secret-name>"
WEBHOOK_CONFIGURATION = "<webhook-configuration>"

_LONGHORN_INDEXED = ("nodes", "replicas", "backingimages", "backingimagemanagers", "backingimagedatasources",
                     "orphans", "settings")

BASE: tuple[Permission, ...] = (
    *(("list", "longhorn.io", plural, "lh", "") for plural in _LONGHORN_INDEXED),
    *(("watch", "longhorn.io", plural, "lh", "") for plural in _LONGHORN_INDEXED),
    ("get", "longhorn.io", "nodes", "lh", ""),
    ("patch", "longhorn.io", "nodes/status", "lh", ""),
    ("create", "", "events", "lh", ""),
    # No delete: records are the audit trail (the controller deletes them only with Settings.retention,
    # which no flag of the webhook sets).
    *((verb, "bimguard.io", "diskrewrites", "own", "") for verb in ("get", "list", "watch", "create")),
    ("update", "bimguard.io", "diskrewrites/status", "own", ""),
    *((verb, "bimguard.io", "prefixclaims", "own", "") for verb in ("get", "list", "watch", "create", "update",
                                                                     "delete")),
    ("create", "coordination.k8s.io", "leases", "own", ""),  # RBAC cannot limit create to a name
    ("get", "coordination.k8s.io", "leases", "own", LEASE),
    ("update", "coordination.k8s.io", "leases", "own", LEASE),
    *((verb, "", "pods", "pods", "") for verb in ("create", "get", "list", "watch", "delete")),
    ("get", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "cluster", WEBHOOK_CONFIGURATION),
)
SELF_MANAGED_TLS: tuple[Permission, ...] = (
    ("create", "", "secrets", "own", ""),
    ("get", "", "secrets", "own", TLS_SECRET),
    ("update", "", "secrets", "own", TLS_SECRET),
)
INJECT_CA_BUNDLE: tuple[Permission, ...] = (
    ("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "cluster", WEBHOOK_CONFIGURATION),
)
METRICS_AUTHORIZATION: tuple[Permission, ...] = (
    ("create", "authentication.k8s.io", "tokenreviews", "cluster", ""),
    ("create", "authorization.k8s.io", "subjectaccessreviews", "cluster", ""),
)


def permissions(*, self_managed_tls: bool, injects_ca_bundle: bool, metrics_authorization: bool) -> tuple[Permission, ...]:
    """The calls of a webhook started with these options: self-managed certificates (no
    `--tls-cert-file`), a caBundle to inject (self-managed, or `--tls-ca-file`), and
    `--metrics-authorization`."""
    return (BASE + (SELF_MANAGED_TLS if self_managed_tls else ()) + (INJECT_CA_BUNDLE if injects_ca_bundle else ())
            + (METRICS_AUTHORIZATION if metrics_authorization else ()))
