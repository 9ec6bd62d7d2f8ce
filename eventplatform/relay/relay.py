"""The relay: follows a log's notifications and publishes each event to JetStream, in order.

Invariant 2 lives here: the position is recorded only after the broker acknowledged every
message up to it. Beyond that:

* **Fenced.** Each message tells JetStream which message must precede it
  (:mod:`eventplatform.relay.fencing`), and the position is recorded only under the current lease
  token (:mod:`eventplatform.leases.leadership`). A lost message or a deposed leader can fail a
  publish, never reorder the stream.
* **Reconciled.** On start and after any failed publish the relay reads the stream's tail and
  moves its position up to the last notification the stream already holds: a crash between
  ack and position record republishes nothing, even after the duplicate window has passed.
* **Unrouted events are recorded**, not dropped: an event whose topic maps to no subject is
  written to ``eventplatform_unrouted_events`` (shown by ``eventplatform status``).

No database transaction is open while the relay waits on the broker.

Observed, at the cost of a call per batch: :class:`~eventplatform.observability.RelayInstruments`
hear of each batch (size, duration, ack latency, event ages) and of fence refusals; an event
stored with a sampled trace gets a ``publish`` span, and every message carries its event's
``traceparent`` (header and CloudEvents attribute).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from eventplatform.backoff import backoff, sleep_or_stop
from eventplatform.errors import BrokerUnavailable, EventPlatformError, PublishError
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.observability.metrics import NO_RELAY_INSTRUMENTS, RelayInstruments
from eventplatform.observability.tracing import PublishSpans
from eventplatform.relay.event_log import Notification, PostgresEventLog
from eventplatform.relay.fencing import FencedPublisher, fence_headers, is_fence_error, read_tail
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.routing import TopicMapper

logger = logging.getLogger(__name__)

#: The message header that carries the event's W3C trace context (as the CloudEvents
#: distributed-tracing extension does in the body).
TRACEPARENT_HEADER = "traceparent"


class StreamAheadOfLog(EventPlatformError):
    """The stream holds a notification the log does not: it belongs to another database."""


class LeaseGuard(Protocol):
    """What the relay needs of its leadership: a token to fence with and a check.

    A Protocol so tests can run a relay without a lease table.
    """

    @property
    def token(self) -> int:
        """The fencing token of the held lease."""
        ...

    def check(self) -> None:
        """Raises :class:`~eventplatform.leadership.LeaseLost` unless the lease is held."""
        ...


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """How the relay batches and waits.

    Attributes:
        stream: the JetStream stream it publishes to (read back to reconcile).
        batch_size: notifications read and published per batch.
        poll_interval: seconds between re-polls when no NOTIFY arrives.
        ack_timeout: seconds to wait for a batch's acks.
        retry_initial: first back-off after a failure, in seconds.
        retry_max: the back-off's cap, in seconds.
    """

    stream: str = "EVENTS"
    batch_size: int = 1000
    poll_interval: float = 1.0
    ack_timeout: float = 10.0
    retry_initial: float = 0.1
    retry_max: float = 5.0


@dataclass(frozen=True, slots=True)
class RelayedBatch:
    """What one batch did, for observers (tests, the demo, metrics)."""

    first: int
    last: int
    messages: Sequence[OutgoingMessage]
    duplicates: int
    unrouted: int = 0


class Relay:
    """Publishes a log's events to JetStream and records its position after the acks.

    Args:
        log: reader of the log's notifications.
        broker: connected NATS broker.
        positions: the relay-position store.
        mapper: topic → subject (``None``: unrouted, recorded instead of published).
        config: batching and waiting.
        on_batch: called after each recorded batch (observers: demo, tests).
        lease: the leadership to fence with (None: unfenced position writes, tests only).
        instruments: what hears of each batch and fence refusal (default: nothing).
    """

    def __init__(
        self,
        *,
        log: PostgresEventLog,
        broker: NatsBroker,
        positions: PostgresRelayPositions,
        mapper: TopicMapper,
        config: RelayConfig | None = None,
        on_batch: Callable[[RelayedBatch], None] | None = None,
        lease: LeaseGuard | None = None,
        instruments: RelayInstruments = NO_RELAY_INSTRUMENTS,
    ) -> None:
        self._log = log
        self._instruments = instruments
        self._timed = instruments is not NO_RELAY_INSTRUMENTS
        self._broker = broker
        self._positions = positions
        self._mapper = mapper
        self._config = config or RelayConfig()
        self._on_batch = on_batch
        self._lease = lease
        self.position = 0
        #: The stream's last sequence when known; None: read the tail before publishing.
        self._last_sequence: int | None = None
        #: How often the relay re-read the stream's tail after a refused or failed publish.
        self.reconciliations = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until ``stop`` is set, then returns after the current batch is recorded.

        A NATS failure is retried with capped exponential back-off and jitter (nats-py
        reconnects underneath), logged once per episode; the position never moves past an
        unacknowledged event. A fenced-off publish re-reads the stream's tail and resumes.

        Raises:
            StoreUnavailable: the PostgreSQL connection is gone; the caller reconnects.
            LeaseLost: another relay leads now; the caller stands by.
            StreamAheadOfLog: the stream holds events this log does not.
        """
        await self._log.listen()
        self.position = await self._positions.get(self._log.log)
        logger.info("relay of %r starts after position %d", self._log.log, self.position)
        failures = 0
        fenced = 0
        while not stop.is_set():
            self._check_lease()
            try:
                if self._last_sequence is None:
                    await self.reconcile()
                batch = await self.relay_once()
            except BrokerUnavailable as e:
                self._last_sequence = None
                failures += 1
                if failures == 1:
                    logger.warning("relay of %r paused: %s; retrying", self._log.log, e)
                await sleep_or_stop(
                    stop, backoff(failures, self._config.retry_initial, self._config.retry_max)
                )
                continue
            except PublishError as e:
                self._last_sequence = None
                if is_fence_error(e):
                    fenced += 1
                    self._instruments.fenced_off()
                    logger.info(
                        "relay of %r fenced off (%s); re-reading the stream", self._log.log, e
                    )
                    if fenced > 3:  # keeps losing to another publisher: do not spin
                        await sleep_or_stop(stop, backoff(fenced - 3, 0.05, 1.0))
                    continue
                failures += 1
                if failures == 1:
                    logger.error("relay of %r refused by JetStream: %s; retrying", self._log.log, e)
                await sleep_or_stop(
                    stop, backoff(failures, self._config.retry_initial, self._config.retry_max)
                )
                continue
            if failures:
                logger.info("relay of %r resumed after %d retries", self._log.log, failures)
                failures = 0
            fenced = 0
            if batch is None:
                await self._wait_for_news(stop)
            elif self._on_batch is not None:
                self._on_batch(batch)

    async def reconcile(self) -> None:
        """Moves the position up to the last notification the stream already holds.

        Also learns the stream's last sequence, the fence of the next publish.

        Raises:
            BrokerUnavailable: JetStream did not answer.
            StreamAheadOfLog: the stream holds a notification beyond the log's head.
            LeaseLost: the lease was lost meanwhile.
        """
        tail = await read_tail(self._broker.js, self._config.stream, self._log.log)
        self.reconciliations += 1
        if tail.last_notification > self.position:
            head = await self._log.head()
            if tail.last_notification > head:
                msg = (
                    f"stream {self._config.stream!r} holds {self._log.log}:"
                    f"{tail.last_notification} but the log's head is {head}: the stream belongs"
                    " to another database or the log was reset; use another stream"
                )
                raise StreamAheadOfLog(msg)
            logger.info(
                "relay of %r: the stream already holds up to %d (position was %d); moving on",
                self._log.log,
                tail.last_notification,
                self.position,
            )
            await self._record(tail.last_notification)
        self._last_sequence = tail.last_sequence

    async def relay_once(self) -> RelayedBatch | None:
        """Publishes the next batch after the current position and records it.

        Returns:
            The batch, or None when the log had nothing new.

        Raises:
            BrokerUnavailable: not every message was acknowledged.
            PublishError: JetStream refused a message (e.g. fenced off).
            LeaseLost: the lease was lost.
        """
        if self._last_sequence is None:
            await self.reconcile()
        started = time.perf_counter()
        notifications = await self._log.read(self.position, self._config.batch_size)
        if not notifications:
            return None
        spans = PublishSpans()
        messages, unrouted, times = self._messages(notifications, spans)
        duplicates = 0
        ack_latency = 0.0
        if messages:
            publishing = time.perf_counter()
            try:
                self._check_lease()
                publisher = FencedPublisher(self._broker.nc)
                acks = await publisher.publish_batch(messages, timeout=self._config.ack_timeout)
            except BaseException as e:
                spans.end(e)
                raise
            ack_latency = time.perf_counter() - publishing
            spans.end()
            duplicates = sum(1 for a in acks if a.duplicate)
            # A duplicate means someone else published that message: re-read the tail.
            self._last_sequence = None if duplicates else int(acks[-1].seq)
        if unrouted:
            await self._positions.record_unrouted(self._log.log, unrouted)
            logger.warning(
                "relay of %r: %d event(s) map to no subject, recorded as unrouted (first: %s)",
                self._log.log,
                len(unrouted),
                unrouted[0][1],
            )
        last = notifications[-1].id
        acked_at = time.time()
        await self._record(last)
        self._instruments.published(
            messages=len(messages),
            duplicates=duplicates,
            duration=time.perf_counter() - started,
            ack_latency=ack_latency,
            event_times=times,
            acked_at=acked_at,
        )
        return RelayedBatch(
            first=notifications[0].id,
            last=last,
            messages=messages,
            duplicates=duplicates,
            unrouted=len(unrouted),
        )

    async def _record(self, position: int) -> None:
        token = self._lease.token if self._lease is not None else None
        await self._positions.record(self._log.log, position, token=token)
        self.position = position

    def _check_lease(self) -> None:
        if self._lease is not None:
            self._lease.check()

    def _messages(
        self, notifications: list[Notification], spans: PublishSpans
    ) -> tuple[list[OutgoingMessage], list[tuple[int, str]], list[str | None]]:
        """The messages of a batch, its unrouted events, and (when measured) the stored
        times of the published events."""
        messages: list[OutgoingMessage] = []
        unrouted: list[tuple[int, str]] = []
        times: list[str | None] = []
        previous: str | None = None
        for n in notifications:
            subject = self._mapper(n.topic)
            if subject is None:
                unrouted.append((n.id, n.topic))
                continue
            msg_id = cloudevents.message_id(self._log.log, n.id)
            headers = fence_headers(previous, self._last_sequence)
            traceparent = None
            if n.traceparent is not None:
                traceparent = spans.begin(
                    n.traceparent,
                    subject=subject,
                    message_id=msg_id,
                    attributes={"eventplatform.log": self._log.log, "eventplatform.position": n.id},
                )
                if traceparent is not None:
                    headers[TRACEPARENT_HEADER] = traceparent
            body = cloudevents.encode(
                log=self._log.log,
                notification_id=n.id,
                aggregate_id=n.originator_id,
                version=n.originator_version,
                topic=n.topic,
                state=n.state,
                traceparent=traceparent,
            )
            messages.append(
                OutgoingMessage(subject=subject, body=body, msg_id=msg_id, headers=headers)
            )
            if self._timed:
                times.append(cloudevents.time_of(n.state))
            previous = msg_id
        return messages, unrouted, times

    async def _wait_for_news(self, stop: asyncio.Event) -> None:
        # Not raced against ``stop``: cancelling a pending notifies() can leave the
        # LISTEN connection mid-protocol. Shutdown waits at most one poll interval.
        if not stop.is_set():
            await self._log.wait(self._config.poll_interval)
