"""A Prometheus histogram that takes a whole batch of observations at once.

``prometheus_client.Histogram.observe`` costs about 2.5 µs a value here (two locks and a Python
loop over the buckets): per event on the relay's hot path (about 33 µs a message at 30k/s)
that alone is 8 %. Event ages are observed per event, in batches of up to thousands, so this
collector takes a batch under one lock and finds each bucket with :func:`bisect.bisect_left`
(C code): about 0.2 µs a value. It is exposed as an ordinary histogram (``_bucket``, ``_sum``,
``_count``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

#: Seconds, from a millisecond to an hour: an event's age spans all of it (a lagging
#: projection, a relay that was down).
AGE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.total = 0.0


class BatchHistogram(Collector):
    """A labelled histogram whose values arrive in batches.

    Args:
        name: the metric's name, with its unit (``..._seconds``).
        documentation: its help text.
        labelnames: the label names (bounded values only: never an aggregate id).
        buckets: upper bounds, ascending (``+Inf`` is implied).
        registry: where to register (None: not registered, e.g. in tests).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float] = AGE_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if list(buckets) != sorted(buckets) or len(set(buckets)) != len(buckets):
            msg = f"buckets of {name} must ascend strictly: {buckets}"
            raise ValueError(msg)
        self.name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = list(buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        """Adds each of ``values`` to the series of ``labels`` (one lock for all of them)."""
        bounds = self._bounds
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                if len(labels) != len(self._labelnames):
                    msg = f"{self.name} takes labels {self._labelnames}, got {labels}"
                    raise ValueError(msg)
                series = self._series[labels] = _Series(len(bounds))
            counts = series.counts
            total = 0.0
            for value in values:
                counts[bisect_left(bounds, value)] += 1
                total += value
            series.total += total

    def describe(self) -> Iterator[Metric]:
        """The family without samples: lets the registry check for name clashes."""
        yield HistogramMetricFamily(self.name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        """The family with one cumulative histogram per label set."""
        family = HistogramMetricFamily(self.name, self._documentation, labels=self._labelnames)
        with self._lock:
            snapshot = [(k, list(s.counts), s.total) for k, s in self._series.items()]
        bounds = [repr(float(b)) for b in self._bounds] + ["+Inf"]
        for labels, counts, total in snapshot:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(labels), buckets, total)
        yield family
