"""Prometheus metrics of the webhook, served on their own plain-HTTP port.

Names follow controller-runtime's webhook metrics (`controller_runtime_webhook_requests_total`,
`..._in_flight_requests`, `..._latency_seconds`) under a `bimguard_` prefix, plus what is
specific to bimguard. Routine reviews update plain numbers (`ReviewSeries`) and log nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator, Mapping, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bimguard import records
from bimguard.prefixes import PREFIX_SPACE
from webhook.scope import LONGHORN_NODE_STATUS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
OUTCOMES = ("unchanged", "rewritten", "blocked")
PHASES = get_args(records.Phase)  # webhook and repair records alike
# Where a record can wait: every phase that is not final, and Blocked (a disk left for the repair).
UNFINISHED_PHASES = tuple(p for p in PHASES if p not in records.FINAL_PHASES) + ("Blocked",)


class ReviewSeries(Collector):
    """The series every review updates: requests by HTTP code, in flight, latency, outcomes.

    The webhook serves from one event-loop thread, so these are plain numbers read at scrape
    time: prometheus_client's child metrics take a lock per update, and five locked updates cost
    ~3 us (label lookups included) of a routine review's ~120 us under load (bench/webhook_bench.py)."""

    def __init__(self, webhook: str) -> None:
        self.webhook = webhook
        self.in_flight = 0
        self.codes: dict[int, int] = {200: 0}  # exported from the start, so rate() has a series
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._latency_sum = 0.0

    def done(self, code: int, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: value <= bound
        self._latency_sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("bimguard_webhook_requests", "Admission requests by HTTP code.",
                                       labels=["webhook", "code"])
        for code, n in sorted(self.codes.items()):
            requests.add_metric([self.webhook, str(code)], n)
        yield requests
        in_flight = GaugeMetricFamily("bimguard_webhook_requests_in_flight", "Admission requests being served.",
                                      labels=["webhook"])
        in_flight.add_metric([self.webhook], self.in_flight)
        yield in_flight
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self._latency_counts):
            cumulative += n
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily("bimguard_webhook_latency_seconds", "Time to answer an admission review.",
                                        labels=["webhook"])
        latency.add_metric([self.webhook], buckets, self._latency_sum)
        yield latency
        outcomes = CounterMetricFamily("bimguard_admission_outcomes",
                                       "Reviews by outcome: unchanged, rewritten, blocked.", labels=["outcome"])
        for outcome, n in self.outcomes.items():
            outcomes.add_metric([outcome], n)
        yield outcomes


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reviews = ReviewSeries(LONGHORN_NODE_STATUS.path)
        r.register(self.reviews)
        self.skipped = Counter("bimguard_admission_skipped_total",
                               "Reviews allowed without a patch although a disk needed a decision, by reason.",
                               ["reason"], registry=r)
        self.collisions = Counter("bimguard_collisions_seen_total",
                                  "First-recorded disks whose prefix was already held.", registry=r)
        self.blocked = Counter("bimguard_blocked_disks_total",
                               "Colliding disks left to the repair Job because they hold data.", registry=r)
        # Both exported by the leader only (it reads every record on each pass; cleared when it
        # stops leading): alert on max() over the replicas.
        self.rewrites = Gauge("bimguard_rewrites", "DiskRewrite records by phase.", ["phase"], registry=r)
        self.unfinished = Gauge(
            "bimguard_rewrites_unfinished",
            "DiskRewrite records still waiting, by phase: those in a phase that is not final, and Blocked ones "
            "whose disk still records the blocked UUID and that no repair record has taken over.",
            ["phase"], registry=r)
        self.occupancy = Gauge("bimguard_prefix_occupancy_ratio",
                               "Share of the 65,536 disk UUID prefixes in use or claimed.", registry=r)
        self.synced = Gauge("bimguard_index_synced", "1 when the resource's list+watch is synced.",
                            ["resource"], registry=r)
        self.full_hash = Gauge("bimguard_longhorn_full_hash_bim_names",
                               "1 when Longhorn names BIMs by the whole UUID (v1.9.2+): nothing to prevent.",
                               registry=r)
        self.cert_expiry = Gauge("bimguard_certificate_expiry_timestamp_seconds",
                                 "Expiry of the serving certificate (Unix time).", registry=r)
        # webhook/detection.py: the groups a scan would report as needing repair, from the index.
        # No series until the index has been synced and evaluated once.
        self.collision_groups = Gauge(
            "bimguard_collision_groups",
            "Existing collision groups (v1 disks whose UUIDs share a BIM name prefix) by kind: prefix, "
            "duplicate-uuid (cloned disks). 0 on Longhorn that names BIMs by the whole UUID.",
            ["kind"], registry=r)

    def set_rewrites(self, counts: Mapping[str, int], unfinished: Mapping[str, int]) -> None:
        """Every phase, 0 where no record has it, so that a rule sees a series go to 0."""
        for phase in PHASES:
            self.rewrites.labels(phase).set(counts.get(phase, 0))
        for phase in UNFINISHED_PHASES:
            self.unfinished.labels(phase).set(unfinished.get(phase, 0))

    def clear_rewrites(self) -> None:
        self.rewrites.clear()
        self.unfinished.clear()

    def set_occupancy(self, prefixes: int) -> None:
        self.occupancy.set(prefixes / PREFIX_SPACE)
