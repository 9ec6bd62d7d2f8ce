"""The alert rules and the dashboard name only metrics the processes export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from eventplatform.observability.metrics import PrometheusConsumerMetrics, PrometheusRelayMetrics

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
NAME = re.compile(r"\beventplatform_[a-z_]+")


def exported() -> set[str]:
    registry = CollectorRegistry()
    PrometheusRelayMetrics(registry, "products")
    PrometheusConsumerMetrics(registry, "projection", "p")
    PrometheusConsumerMetrics(registry, "handler", "h")
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def test_every_metric_an_alert_rule_names_is_exported():
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    named = set(NAME.findall(text)) - {"eventplatform_"}
    assert named, "the rules name no metric"
    assert named <= exported(), named - exported()


def test_every_metric_the_dashboard_plots_is_exported():
    dashboard = json.loads((DEPLOY / "grafana" / "eventplatform.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    named = {n for e in exprs for n in NAME.findall(e)}
    assert len(named) > 20
    assert named <= exported(), named - exported()


def test_the_dashboard_covers_every_hop_of_event_age():
    text = (DEPLOY / "grafana" / "eventplatform.json").read_text()
    for hop in ("appended_to_published", "published_to_applied", "appended_to_applied"):
        assert hop in text
