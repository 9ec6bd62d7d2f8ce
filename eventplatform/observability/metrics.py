"""What the platform's processes count and measure, as Prometheus metrics.

The data path reports through two small ports, :class:`RelayInstruments` and
:class:`ConsumerInstruments`, called once per batch with plain numbers (never per event, never
with an aggregate id). :class:`PrometheusRelayMetrics` and :class:`PrometheusConsumerMetrics`
are their adapters, registered in a registry passed in (never only the global one); the
``NO_*`` null objects are what runs when metrics are off, at the cost of an empty call per batch.

Names follow Prometheus conventions: ``eventplatform_`` first, the unit last (``_seconds``,
``_events``, ``_messages``), ``_total`` on counters; labels are bounded: ``log``,
``projection``, ``handler``, ``dependency``.

Event age is measured per hop from the event's stored time (the ``timestamp`` eventsourcing
stamps when the command creates the event, a moment before its transaction commits):

* ``eventplatform_relay_appended_to_published_seconds``: until JetStream acknowledged it;
* ``eventplatform_<kind>_published_to_applied_seconds``: from JetStream's store time until the
  consumer's transaction committed;
* ``eventplatform_<kind>_appended_to_applied_seconds``: the whole way.

Ages compare clocks of different hosts: run NTP, or read small ages with the skew in mind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eventplatform.observability.eventtime import epoch_of
from eventplatform.observability.histogram import AGE_BUCKETS, BatchHistogram

PREFIX = "eventplatform"
#: Seconds a batch takes: from a millisecond to a minute.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Messages a batch carries, up to the largest batch size allowed.
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

Dependency = Literal["postgres", "nats"]
ConsumerKind = Literal["projection", "handler"]


class RelayInstruments(Protocol):
    """What the relay reports; a Protocol so the relay does not know about Prometheus."""

    def published(
        self,
        *,
        messages: int,
        duplicates: int,
        duration: float,
        ack_latency: float,
        event_times: Sequence[str | None],
        acked_at: float,
    ) -> None:
        """One batch acknowledged and its position recorded.

        Args:
            messages: messages JetStream acknowledged.
            duplicates: of those, the ones it dropped as repeats.
            duration: seconds from reading the batch to recording its position.
            ack_latency: seconds from the first publish to the last ack.
            event_times: each published event's stored time (RFC 3339), None if unknown.
            acked_at: when the acks were in, seconds since the epoch.
        """
        ...

    def fenced_off(self) -> None:
        """JetStream refused a publish on its expected-last header (another publisher)."""
        ...

    def reconnected(self, dependency: Dependency) -> None:
        """A lost connection to ``dependency`` was established again."""
        ...

    def sampled(self, *, head: int, position: int, leader: bool) -> None:
        """The periodic look at the log: its head, the recorded position, who leads."""
        ...


class ConsumerInstruments(Protocol):
    """What a projection worker or a handler consumer reports."""

    def settled(
        self,
        *,
        applied: int,
        skipped: int,
        dead_lettered: int,
        forged: int,
        parked: int,
        duration: float,
    ) -> None:
        """One batch committed and acknowledged.

        Args:
            applied: events applied (a handler: handled).
            skipped: redeliveries and repeats, already applied.
            dead_lettered: messages dead-lettered, ``forged`` included.
            forged: messages the event store contradicts.
            parked: events parked behind their aggregate's dead letter.
            duration: seconds from the fetch's return to the last ack.
        """
        ...

    def retried(self, count: int = 1) -> None:
        """A batch (a projection) or an event (a handler) is tried again."""
        ...

    def aged(self, applied: Sequence[tuple[str, str | None, float | None]], at: float) -> None:
        """Ages of applied events: ``(log, stored time, JetStream store time)`` each.

        Args:
            applied: per event, its log, its stored time (RFC 3339) and when JetStream
                stored its message (seconds since the epoch; None for an event filled in
                from the store).
            at: when the batch committed, seconds since the epoch.
        """
        ...

    def sampled(
        self,
        *,
        positions: Mapping[str, int],
        heads: Mapping[str, int],
        pending: int | None,
        ack_pending: int | None,
    ) -> None:
        """The periodic look: positions and heads per log, the broker's pending counts."""
        ...

    def partition(self, k: int) -> ConsumerInstruments:
        """The same consumer's instruments for its partition ``k`` (label ``partition``)."""
        ...


class _NoRelayInstruments:
    def published(
        self,
        *,
        messages: int,
        duplicates: int,
        duration: float,
        ack_latency: float,
        event_times: Sequence[str | None],
        acked_at: float,
    ) -> None:
        return None

    def fenced_off(self) -> None:
        return None

    def reconnected(self, dependency: Dependency) -> None:
        return None

    def sampled(self, *, head: int, position: int, leader: bool) -> None:
        return None


class _NoConsumerInstruments:
    def settled(
        self,
        *,
        applied: int,
        skipped: int,
        dead_lettered: int,
        forged: int,
        parked: int,
        duration: float,
    ) -> None:
        return None

    def retried(self, count: int = 1) -> None:
        return None

    def aged(self, applied: Sequence[tuple[str, str | None, float | None]], at: float) -> None:
        return None

    def sampled(
        self,
        *,
        positions: Mapping[str, int],
        heads: Mapping[str, int],
        pending: int | None,
        ack_pending: int | None,
    ) -> None:
        return None

    def partition(self, k: int) -> ConsumerInstruments:
        return self


#: The relay's instruments when metrics are off.
NO_RELAY_INSTRUMENTS: RelayInstruments = _NoRelayInstruments()
#: A consumer's instruments when metrics are off.
NO_CONSUMER_INSTRUMENTS: ConsumerInstruments = _NoConsumerInstruments()


def ages(times: Iterable[str | None], at: float) -> list[float]:
    """Seconds from each time to ``at``; unknown or unreadable times are left out, and a
    time in the future (another host's clock ahead) counts as 0."""
    found = []
    for time in times:
        if time is None:
            continue
        epoch = epoch_of(time)
        if epoch is not None:
            found.append(max(at - epoch, 0.0))
    return found


class PrometheusRelayMetrics:
    """The relay's metrics for one log, in ``registry``.

    Args:
        registry: where the metrics are registered (one per process, served on /metrics).
        log: the log this relay follows (the ``log`` label).
    """

    def __init__(self, registry: CollectorRegistry, log: str) -> None:
        self.log = log
        labels = ["log"]
        p = f"{PREFIX}_relay"
        self._published = Counter(
            f"{p}_published_messages",
            "Messages JetStream acknowledged (duplicates included).",
            labels,
            registry=registry,
        ).labels(log)
        self._duplicates = Counter(
            f"{p}_duplicate_acks",
            "Messages JetStream acknowledged as duplicates of a message it already held.",
            labels,
            registry=registry,
        ).labels(log)
        self._batch_size = Histogram(
            f"{p}_batch_messages",
            "Messages per published batch.",
            labels,
            buckets=SIZE_BUCKETS,
            registry=registry,
        ).labels(log)
        self._batch_duration = Histogram(
            f"{p}_batch_duration_seconds",
            "Seconds from reading a batch to recording its position.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(log)
        self._ack_latency = Histogram(
            f"{p}_ack_latency_seconds",
            "Seconds from a batch's first publish to its last ack.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(log)
        self._head = Gauge(
            f"{PREFIX}_log_head_position",
            "The highest notification id in the log (the last periodic look).",
            labels,
            registry=registry,
        ).labels(log)
        self._position = Gauge(
            f"{p}_position",
            "The relay position recorded in PostgreSQL: every event up to it is acknowledged.",
            labels,
            registry=registry,
        ).labels(log)
        self._lag = Gauge(
            f"{p}_lag_events",
            "Log head minus relay position: events stored but not yet published.",
            labels,
            registry=registry,
        ).labels(log)
        self._leader = Gauge(
            f"{p}_leader",
            "1 while this process holds the log's relay lease, else 0.",
            labels,
            registry=registry,
        ).labels(log)
        self._fenced = Counter(
            f"{p}_fence_refusals",
            "Publishes JetStream refused on their expected-last header (another publisher).",
            labels,
            registry=registry,
        ).labels(log)
        reconnects = Counter(
            f"{p}_reconnects",
            "Connections to a dependency established again after a loss.",
            ["log", "dependency"],
            registry=registry,
        )
        self._reconnects = {d: reconnects.labels(log, d) for d in ("postgres", "nats")}
        self._age = BatchHistogram(
            f"{p}_appended_to_published_seconds",
            "Event age when JetStream acknowledged it: from the stored event time.",
            labels,
            buckets=AGE_BUCKETS,
            registry=registry,
        )
        self._labels = (log,)

    def published(
        self,
        *,
        messages: int,
        duplicates: int,
        duration: float,
        ack_latency: float,
        event_times: Sequence[str | None],
        acked_at: float,
    ) -> None:
        """See :meth:`RelayInstruments.published`."""
        self._published.inc(messages)
        if duplicates:
            self._duplicates.inc(duplicates)
        self._batch_size.observe(messages)
        self._batch_duration.observe(duration)
        if messages:
            self._ack_latency.observe(ack_latency)
        self._age.observe_many(self._labels, ages(event_times, acked_at))

    def fenced_off(self) -> None:
        """See :meth:`RelayInstruments.fenced_off`."""
        self._fenced.inc()

    def reconnected(self, dependency: Dependency) -> None:
        """See :meth:`RelayInstruments.reconnected`."""
        self._reconnects[dependency].inc()

    def sampled(self, *, head: int, position: int, leader: bool) -> None:
        """See :meth:`RelayInstruments.sampled`."""
        self._head.set(head)
        self._position.set(position)
        self._lag.set(max(head - position, 0))
        self._leader.set(1 if leader else 0)


class _ConsumerFamilies:
    """The metric families of one kind of consumer in one registry (shared by partitions)."""

    def __init__(self, registry: CollectorRegistry, kind: ConsumerKind) -> None:
        p = f"{PREFIX}_{kind}"
        one = [kind, "partition"]

        def counter(metric: str, text: str) -> Counter:
            return Counter(f"{p}_{metric}", text, one, registry=registry)

        verb = "applied" if kind == "projection" else "handled"
        self.applied = counter("applied_events", f"Events {verb} and committed.")
        self.skipped = counter(
            "skipped_events", "Events not applied again: redeliveries, republishes, repeats."
        )
        self.dead = counter(
            "dead_lettered_messages", "Messages dead-lettered (forged ones included)."
        )
        self.forged = counter(
            "forged_messages", "Messages the event store contradicts (dead-lettered)."
        )
        self.parked = counter(
            "parked_events", "Events parked behind their aggregate's dead letter."
        )
        self.retries = counter("retries", "Batches (projections) or events (handlers) tried again.")
        self.duration = Histogram(
            f"{p}_batch_duration_seconds",
            "Seconds from a fetch's return to the batch's last ack.",
            one,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        per_log = [kind, "partition", "log"]
        self.position = Gauge(
            f"{p}_position",
            "The position committed in PostgreSQL, per log.",
            per_log,
            registry=registry,
        )
        self.lag = Gauge(
            f"{p}_lag_events",
            "Log head minus the committed position: events not yet applied.",
            per_log,
            registry=registry,
        )
        self.pending = Gauge(
            f"{p}_pending_messages",
            "Messages JetStream holds for this consumer that it has not delivered yet.",
            one,
            registry=registry,
        )
        self.ack_pending = Gauge(
            f"{p}_ack_pending_messages",
            "Messages delivered to this consumer and not acknowledged yet.",
            one,
            registry=registry,
        )
        self.appended_to_applied = BatchHistogram(
            f"{p}_appended_to_applied_seconds",
            f"Event age when {verb}: from the stored event time to the commit.",
            per_log,
            registry=registry,
        )
        self.published_to_applied = BatchHistogram(
            f"{p}_published_to_applied_seconds",
            f"Seconds from JetStream storing the message to the event being {verb}.",
            per_log,
            registry=registry,
        )


class PrometheusConsumerMetrics:
    """A projection's or a handler's metrics, in ``registry``.

    Every series carries the consumer's name and its ``partition`` (empty when the consumer
    is not partitioned); a partitioned consumer's partitions report through
    :meth:`partition`, which shares these metric families.

    Args:
        registry: where the metrics are registered.
        kind: ``"projection"`` or ``"handler"``: the metric names' middle part and the label.
        name: the projection's or handler's name (the label's value).
        partition: the partition label's value ("" when not partitioned).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        kind: ConsumerKind,
        name: str,
        *,
        partition: str = "",
        families: _ConsumerFamilies | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self._partition = partition
        if families is None:
            assert registry is not None
            families = _ConsumerFamilies(registry, kind)
        self._families = f = families
        bound = (name, partition)
        self._applied = f.applied.labels(*bound)
        self._skipped = f.skipped.labels(*bound)
        self._dead = f.dead.labels(*bound)
        self._forged = f.forged.labels(*bound)
        self._parked = f.parked.labels(*bound)
        self._retries = f.retries.labels(*bound)
        self._duration = f.duration.labels(*bound)
        self._position = f.position
        self._lag = f.lag
        self._pending = f.pending.labels(*bound)
        self._ack_pending = f.ack_pending.labels(*bound)
        self._appended_to_applied = f.appended_to_applied
        self._published_to_applied = f.published_to_applied

    def partition(self, k: int) -> PrometheusConsumerMetrics:
        """See :meth:`ConsumerInstruments.partition`."""
        return PrometheusConsumerMetrics(
            None, self.kind, self.name, partition=str(k), families=self._families
        )

    def settled(
        self,
        *,
        applied: int,
        skipped: int,
        dead_lettered: int,
        forged: int,
        parked: int,
        duration: float,
    ) -> None:
        """See :meth:`ConsumerInstruments.settled`."""
        for counter, value in (
            (self._applied, applied),
            (self._skipped, skipped),
            (self._dead, dead_lettered),
            (self._forged, forged),
            (self._parked, parked),
        ):
            if value:
                counter.inc(value)
        self._duration.observe(duration)

    def retried(self, count: int = 1) -> None:
        """See :meth:`ConsumerInstruments.retried`."""
        self._retries.inc(count)

    def aged(self, applied: Sequence[tuple[str, str | None, float | None]], at: float) -> None:
        """See :meth:`ConsumerInstruments.aged`."""
        by_log: dict[str, tuple[list[str | None], list[float]]] = {}
        for log, time, published in applied:
            times, transits = by_log.setdefault(log, ([], []))
            times.append(time)
            if published is not None:
                transits.append(max(at - published, 0.0))
        for log, (times, transits) in by_log.items():
            labels = (self.name, self._partition, log)
            self._appended_to_applied.observe_many(labels, ages(times, at))
            self._published_to_applied.observe_many(labels, transits)

    def sampled(
        self,
        *,
        positions: Mapping[str, int],
        heads: Mapping[str, int],
        pending: int | None,
        ack_pending: int | None,
    ) -> None:
        """See :meth:`ConsumerInstruments.sampled`."""
        for log in set(positions) | set(heads):
            position = positions.get(log, 0)
            self._position.labels(self.name, self._partition, log).set(position)
            if log in heads:
                self._lag.labels(self.name, self._partition, log).set(max(heads[log] - position, 0))
        if pending is not None:
            self._pending.set(pending)
        if ack_pending is not None:
            self._ack_pending.set(ack_pending)
