"""The metrics say what happened in Prometheus' terms: units in names, bounded labels."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from eventplatform.observability.metrics import (
    NO_CONSUMER_INSTRUMENTS,
    NO_RELAY_INSTRUMENTS,
    PrometheusConsumerMetrics,
    PrometheusRelayMetrics,
    ages,
)

ALLOWED_LABELS = {"log", "projection", "handler", "partition", "dependency", "le"}
UNITS = ("_seconds", "_events", "_messages", "_total", "_position", "_leader")


def all_metrics() -> CollectorRegistry:
    registry = CollectorRegistry()
    relay = PrometheusRelayMetrics(registry, "products")
    relay.published(
        messages=1, duplicates=0, duration=0.1, ack_latency=0.05, event_times=[None], acked_at=0
    )
    relay.reconnected("nats")
    relay.sampled(head=1, position=1, leader=True)
    for kind in ("projection", "handler"):
        consumer = PrometheusConsumerMetrics(registry, kind, "x")
        consumer.settled(applied=1, skipped=1, dead_lettered=1, forged=1, parked=1, duration=0.1)
        consumer.aged([("products", "2026-01-01T00:00:00+00:00", 1.0)], at=2.0)
        consumer.sampled(positions={"products": 1}, heads={"products": 2}, pending=0, ack_pending=0)
    return registry


def test_every_metric_is_namespaced_says_its_unit_and_has_only_bounded_labels():
    for family in all_metrics().collect():
        assert family.name.startswith("eventplatform_"), family.name
        assert family.name.endswith(UNITS) or family.type == "counter", family.name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)


def test_a_relayed_batch_counts_its_messages_times_its_acks_and_ages_its_events():
    registry = CollectorRegistry()
    relay = PrometheusRelayMetrics(registry, "products")
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 2)) + ".000000+00:00"
    relay.published(
        messages=3,
        duplicates=1,
        duration=0.02,
        ack_latency=0.01,
        event_times=[stamp, stamp, None],
        acked_at=now,
    )
    labels = {"log": "products"}
    get = registry.get_sample_value
    assert get("eventplatform_relay_published_messages_total", labels) == 3
    assert get("eventplatform_relay_duplicate_acks_total", labels) == 1
    assert get("eventplatform_relay_batch_messages_sum", labels) == 3
    assert get("eventplatform_relay_ack_latency_seconds_count", labels) == 1
    assert get("eventplatform_relay_appended_to_published_seconds_count", labels) == 2
    age = get("eventplatform_relay_appended_to_published_seconds_sum", labels)
    assert age == pytest.approx(2 * 2.0, abs=2 * 1.01)


def test_the_periodic_look_sets_head_position_lag_and_leadership():
    registry = CollectorRegistry()
    relay = PrometheusRelayMetrics(registry, "products")
    relay.sampled(head=120, position=100, leader=True)
    get = registry.get_sample_value
    assert get("eventplatform_relay_lag_events", {"log": "products"}) == 20
    assert get("eventplatform_relay_leader", {"log": "products"}) == 1
    relay.sampled(head=120, position=120, leader=False)
    assert get("eventplatform_relay_lag_events", {"log": "products"}) == 0
    assert get("eventplatform_relay_leader", {"log": "products"}) == 0


def test_fence_refusals_and_reconnects_are_counted_per_dependency():
    registry = CollectorRegistry()
    relay = PrometheusRelayMetrics(registry, "products")
    relay.fenced_off()
    relay.reconnected("postgres")
    relay.reconnected("postgres")
    get = registry.get_sample_value
    assert get("eventplatform_relay_fence_refusals_total", {"log": "products"}) == 1
    assert (
        get("eventplatform_relay_reconnects_total", {"log": "products", "dependency": "postgres"})
        == 2
    )
    assert (
        get("eventplatform_relay_reconnects_total", {"log": "products", "dependency": "nats"}) == 0
    )


def test_a_settled_batch_counts_each_outcome_and_forged_ones_apart():
    registry = CollectorRegistry()
    m = PrometheusConsumerMetrics(registry, "projection", "product_view")
    m.settled(applied=5, skipped=2, dead_lettered=2, forged=1, parked=3, duration=0.05)
    m.retried()
    labels = {"projection": "product_view", "partition": ""}
    get = registry.get_sample_value
    assert get("eventplatform_projection_applied_events_total", labels) == 5
    assert get("eventplatform_projection_skipped_events_total", labels) == 2
    assert get("eventplatform_projection_dead_lettered_messages_total", labels) == 2
    assert get("eventplatform_projection_forged_messages_total", labels) == 1
    assert get("eventplatform_projection_parked_events_total", labels) == 3
    assert get("eventplatform_projection_retries_total", labels) == 1
    assert get("eventplatform_projection_batch_duration_seconds_count", labels) == 1


def test_applied_events_fill_both_age_histograms_per_log():
    registry = CollectorRegistry()
    m = PrometheusConsumerMetrics(registry, "handler", "welcome_mail")
    at = 1_800_000_010.0
    m.aged(
        [
            ("products", "2027-01-15T08:00:00+00:00", at - 0.5),
            ("orders", "2027-01-15T08:00:05+00:00", None),  # filled from the store
        ],
        at=at,
    )
    get = registry.get_sample_value
    products = {"handler": "welcome_mail", "partition": "", "log": "products"}
    orders = {"handler": "welcome_mail", "partition": "", "log": "orders"}
    assert get("eventplatform_handler_published_to_applied_seconds_sum", products) == 0.5
    assert get("eventplatform_handler_published_to_applied_seconds_count", orders) == 0
    assert get("eventplatform_handler_appended_to_applied_seconds_count", orders) == 1


def test_position_lag_and_pending_come_from_the_periodic_look():
    registry = CollectorRegistry()
    m = PrometheusConsumerMetrics(registry, "projection", "product_view")
    m.sampled(positions={"products": 7}, heads={"products": 10}, pending=3, ack_pending=1)
    get = registry.get_sample_value
    labels = {"projection": "product_view", "partition": "", "log": "products"}
    assert get("eventplatform_projection_position", labels) == 7
    assert get("eventplatform_projection_lag_events", labels) == 3
    assert (
        get(
            "eventplatform_projection_pending_messages",
            {"projection": "product_view", "partition": ""},
        )
        == 3
    )
    assert (
        get(
            "eventplatform_projection_ack_pending_messages",
            {"projection": "product_view", "partition": ""},
        )
        == 1
    )


def test_ages_skip_unknown_times_and_clamp_a_clock_ahead_to_zero():
    assert ages([None, "junk", "2027-01-15T08:00:00+00:00"], at=0.0) == [0.0]


def test_the_null_instruments_accept_every_report():
    NO_RELAY_INSTRUMENTS.published(
        messages=1, duplicates=0, duration=0, ack_latency=0, event_times=[], acked_at=0
    )
    NO_RELAY_INSTRUMENTS.fenced_off()
    NO_RELAY_INSTRUMENTS.reconnected("nats")
    NO_RELAY_INSTRUMENTS.sampled(head=0, position=0, leader=False)
    NO_CONSUMER_INSTRUMENTS.settled(
        applied=0, skipped=0, dead_lettered=0, forged=0, parked=0, duration=0
    )
    NO_CONSUMER_INSTRUMENTS.retried()
    NO_CONSUMER_INSTRUMENTS.aged([], at=0)
    NO_CONSUMER_INSTRUMENTS.sampled(positions={}, heads={}, pending=None, ack_pending=None)
