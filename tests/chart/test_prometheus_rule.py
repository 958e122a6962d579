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
                                                                   "for": "5m"}}}) if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom" and rule["metadata"]["namespace"] == "bimguard-system"
    rules = rule["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["BimguardCollisionGroups", "BimguardPreventionSkipped",
                                          "BimguardCertificateExpiresSoon"]
    assert rules[0]["for"] == "5m"
    known = exported()
    for r in rules:
        promql.parse(r["expr"])  # raises on invalid PromQL
        used = set(re.findall(r"\bbimguard_[a-z_]+\b", r["expr"]))
        assert used and used <= known, (r["alert"], used - known)
        assert 'namespace="bimguard-system"' in r["expr"]


def test_the_schema_refuses_a_duration_prometheus_would_not_parse() -> None:
    with pytest.raises(Exception, match="for"):
        rendered({"metrics": {"prometheusRule": {"enabled": True, "for": "ten minutes"}}})
