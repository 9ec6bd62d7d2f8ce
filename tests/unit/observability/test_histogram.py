"""A histogram fed a batch at a time reads like any Prometheus histogram."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from eventplatform.observability.histogram import BatchHistogram


def test_a_batch_of_values_lands_in_cumulative_buckets_with_sum_and_count():
    registry = CollectorRegistry()
    h = BatchHistogram("x_seconds", "x", ["log"], buckets=(0.1, 1.0), registry=registry)
    h.observe_many(("a",), [0.05, 0.1, 0.5, 2.0])
    h.observe_many(("a",), [0.2])
    assert registry.get_sample_value("x_seconds_bucket", {"log": "a", "le": "0.1"}) == 2
    assert registry.get_sample_value("x_seconds_bucket", {"log": "a", "le": "1.0"}) == 4
    assert registry.get_sample_value("x_seconds_bucket", {"log": "a", "le": "+Inf"}) == 5
    assert registry.get_sample_value("x_seconds_count", {"log": "a"}) == 5
    assert registry.get_sample_value("x_seconds_sum", {"log": "a"}) == pytest.approx(2.85)
    assert b'x_seconds_bucket{le="+Inf",log="a"} 5.0' in generate_latest(registry)


def test_each_label_set_is_a_series_of_its_own():
    registry = CollectorRegistry()
    h = BatchHistogram("y_seconds", "y", ["log"], buckets=(1.0,), registry=registry)
    h.observe_many(("a",), [0.5])
    h.observe_many(("b",), [5.0, 6.0])
    assert registry.get_sample_value("y_seconds_count", {"log": "a"}) == 1
    assert registry.get_sample_value("y_seconds_count", {"log": "b"}) == 2


def test_buckets_must_ascend_and_labels_must_match():
    with pytest.raises(ValueError, match="ascend"):
        BatchHistogram("z_seconds", "z", [], buckets=(1.0, 0.5))
    h = BatchHistogram("z_seconds", "z", ["log"])
    with pytest.raises(ValueError, match="takes labels"):
        h.observe_many(("a", "b"), [1.0])
