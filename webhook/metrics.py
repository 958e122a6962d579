"""Prometheus metrics of the webhook, served on their own plain-HTTP port.

Names follow controller-runtime's webhook metrics (`controller_runtime_webhook_requests_total`,
`..._in_flight_requests`, `..._latency_seconds`) under a `bimguard_` prefix, plus what is
specific to bimguard. Routine reviews update two or three series and log nothing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bimguard.prefixes import PREFIX_SPACE


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("bimguard_webhook_requests_total", "Admission requests by HTTP code.",
                                ["webhook", "code"], registry=r)
        self.in_flight = Gauge("bimguard_webhook_requests_in_flight", "Admission requests being served.",
                               ["webhook"], registry=r)
        self.latency = Histogram("bimguard_webhook_latency_seconds", "Time to answer an admission review.",
                                 ["webhook"], registry=r,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        self.outcomes = Counter("bimguard_admission_outcomes_total",
                                "Reviews by outcome: unchanged, rewritten, blocked.", ["outcome"], registry=r)
        self.skipped = Counter("bimguard_admission_skipped_total",
                               "Reviews allowed without a patch although a disk needed a decision, by reason.",
                               ["reason"], registry=r)
        self.collisions = Counter("bimguard_collisions_seen_total",
                                  "First-recorded disks whose prefix was already held.", registry=r)
        self.blocked = Counter("bimguard_blocked_disks_total",
                               "Colliding disks left to the repair Job because they hold data.", registry=r)
        self.rewrites = Gauge("bimguard_rewrites", "DiskRewrite records by phase.", ["phase"], registry=r)
        self.occupancy = Gauge("bimguard_prefix_occupancy_ratio",
                               "Share of the 65,536 disk UUID prefixes in use or claimed.", registry=r)
        self.synced = Gauge("bimguard_index_synced", "1 when the resource's list+watch is synced.",
                            ["resource"], registry=r)
        self.full_hash = Gauge("bimguard_longhorn_full_hash_bim_names",
                               "1 when Longhorn names BIMs by the whole UUID (v1.9.2+): nothing to prevent.",
                               registry=r)
        self.cert_expiry = Gauge("bimguard_certificate_expiry_timestamp_seconds",
                                 "Expiry of the serving certificate (Unix time).", registry=r)

    def set_occupancy(self, prefixes: int) -> None:
        self.occupancy.set(prefixes / PREFIX_SPACE)
