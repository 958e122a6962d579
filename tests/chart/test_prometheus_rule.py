"""The chart's PrometheusRule: off by default; when on, every expression parses as PromQL (a real
parser, promql-parser) and selects only series bimguard's webhook exports (webhook/metrics.py)."""

from __future__ import annotations

import re

import helm_python as helm
import promql_parser as promql
import pytest
import yaml

from tests.chart.test_chart import CHART
from webhook.metrics import Metrics


def rendered(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="bg", namespace="bimguard-system", is_install=True)
    return [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def exported() -> set[str]:
    """Every series name the webhook's registry can export (counters with their _total)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_off_by_default() -> None:
    assert not [d for d in rendered({}) if d["kind"] == "PrometheusRule"]


def test_every_rule_parses_and_selects_exported_series() -> None:
    [rule] = [d for d in rendered({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"},
                                                                   "for": "5m", "unfinishedFor": "6h"}}})
              if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom" and rule["metadata"]["namespace"] == "bimguard-system"
    rules = rule["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["BimguardCollisionGroups", "BimguardPreventionSkipped",
                                          "BimguardRewritesUnfinished", "BimguardCertificateExpiresSoon"]
    assert rules[0]["for"] == "5m" and rules[2]["for"] == "6h"
    known = exported()
    for r in rules:
        promql.parse(r["expr"])  # raises on invalid PromQL
        used = set(re.findall(r"\bbimguard_[a-z_]+\b", r["expr"]))
        assert used and used <= known, (r["alert"], used - known)
        assert 'namespace="bimguard-system"' in r["expr"]


def test_the_unfinished_records_alert_names_every_phase_a_record_can_wait_in() -> None:
    """Its series carries a `phase` for each phase a record can wait in (webhook/metrics.py), every
    one exported from the first pass (0 when empty), and only the leader exports it: max by phase."""
    [rule] = [d for d in rendered({"metrics": {"prometheusRule": {"enabled": True}}}) if d["kind"] == "PrometheusRule"]
    [alert] = [r for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "BimguardRewritesUnfinished"]
    assert alert["for"] == "3h"
    assert alert["expr"].startswith("max by (phase) (bimguard_rewrites_unfinished{")
    metrics = Metrics()
    metrics.set_rewrites({}, {})
    [family] = [f for f in metrics.registry.collect() if f.name == "bimguard_rewrites_unfinished"]
    assert sorted(s.labels["phase"] for s in family.samples) == sorted(
        ["Pending", "Preparing", "Draining", "Rewriting", "Restoring", "Blocked"])
    assert {s.value for s in family.samples} == {0}


@pytest.mark.parametrize("key", ["for", "unfinishedFor"])
def test_the_schema_refuses_a_duration_prometheus_would_not_parse(key: str) -> None:
    with pytest.raises(Exception, match=key):
        rendered({"metrics": {"prometheusRule": {"enabled": True, key: "ten minutes"}}})
