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
  The tail is checked against the store, not trusted (:mod:`eventplatform.relay.tail`): a
  forged message is passed over with a warning; another database's history stops the relay.
* **Duplicates are checked.** JetStream answers a message whose ``Nats-Msg-Id`` it has seen
  within its duplicate window with ``duplicate: true`` and drops it. That is cheap and right
  when the earlier message was this relay's own (a crash, a deposed leader), and a loss when
  someone else published first under the relay's id. So the message the ack points to is read
  and compared with the stored event; if it is not the relay's, the position stays before the
  event and the relay retries, logging one error, until JetStream has forgotten the id and
  takes the event (:class:`ForeignDuplicate`).
* **Unrouted and oversized events are recorded**, not dropped and not retried forever: an event
  whose topic maps to no subject goes to ``eventplatform_unrouted_events``, one larger than the
  server's ``max_payload`` to ``eventplatform_oversized_events`` (both shown by
  ``eventplatform status``); its position passes, consumers see a gap they tolerate.

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
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import api

from eventplatform.backoff import backoff, sleep_or_stop
from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.observability.metrics import NO_RELAY_INSTRUMENTS, RelayInstruments
from eventplatform.observability.tracing import PublishSpans
from eventplatform.partitions import partition_of, partitioned_subject
from eventplatform.relay.event_log import Notification, PostgresEventLog
from eventplatform.relay.fencing import (
    FencedPublisher,
    Refused,
    fence_headers,
    is_fence_error,
    wire_size,
)
from eventplatform.relay.genuine import carries
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.routing import TopicMapper
from eventplatform.relay.stream_reader import StoredMessage, get_message
from eventplatform.relay.tail import MAX_SCAN, StreamAheadOfLog, Suspect, read_tail
from eventplatform.store.event_state import time_of

__all__ = [
    "ForeignDuplicate",
    "LeaseGuard",
    "Relay",
    "RelayConfig",
    "RelayedBatch",
    "StreamAheadOfLog",
]

logger = logging.getLogger(__name__)

#: Bodies shorter than ``max_payload`` by more than this fit whatever their headers; longer
#: ones are measured exactly (:func:`~eventplatform.relay.fencing.wire_size`).
_HEADER_ROOM = 1024
#: The message header that carries the event's W3C trace context (as the CloudEvents
#: distributed-tracing extension does in the body).
TRACEPARENT_HEADER = "traceparent"


class ForeignDuplicate(PublishError):
    """JetStream dropped an event as a duplicate of a message that is not the relay's.

    Someone published under the event's ``Nats-Msg-Id`` first (a forger, or another
    database's relay on the same stream). The event is not in the stream: the relay keeps its
    position before it and retries until JetStream's duplicate window has passed.

    Attributes:
        notification: the event's notification id.
        seq: the stream sequence of the message JetStream took it for.
        landed_after: later events of the same batch that JetStream did accept (they are in
            the stream before this one will be).
    """

    def __init__(self, message: str, *, notification: int, seq: int, landed_after: int) -> None:
        super().__init__(message)
        self.notification = notification
        self.seq = seq
        self.landed_after = landed_after


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
        partitions: with more than 1, each subject gets the aggregate's partition right after
            ``subject_prefix`` (:mod:`eventplatform.messagebus.partitions`).
        subject_prefix: the prefix the partition token follows.
    """

    stream: str = "EVENTS"
    batch_size: int = 1000
    poll_interval: float = 1.0
    ack_timeout: float = 10.0
    retry_initial: float = 0.1
    retry_max: float = 5.0
    partitions: int = 1
    subject_prefix: str = ""


@dataclass(frozen=True, slots=True)
class RelayedBatch:
    """What one batch did, for observers (tests, the demo, metrics)."""

    first: int
    last: int
    messages: Sequence[OutgoingMessage]
    duplicates: int
    unrouted: int = 0
    oversized: int = 0


@dataclass(slots=True)
class _Prepared:
    """A batch turned into messages, and what is not published."""

    messages: list[OutgoingMessage] = field(default_factory=list)
    #: the stored event of each message, index for index
    sources: list[Notification] = field(default_factory=list)
    unrouted: list[tuple[int, str]] = field(default_factory=list)
    #: (notification id, topic, size with headers, max_payload)
    oversized: list[tuple[int, str, int, int]] = field(default_factory=list)


class Relay:
    """Publishes a log's events to JetStream and records its position after the acks.

    Args:
        log: reader of the log's notifications.
        broker: connected NATS broker.
        positions: the relay-position store.
        mapper: topic → subject (``None``: unrouted, recorded instead of published).
        config: batching and waiting.
        on_batch: called after each recorded batch (observers: demo, metrics, tests).
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
        #: The notification JetStream dropped as another's duplicate: published alone until
        #: it lands (in memory only; after a restart :mod:`.tail` finds it missing again).
        self._held: int | None = None
        self._reported: set[int] = set()  # stream sequences of suspects already warned about

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
        await self._warn_of_oversized()
        failures = 0
        fenced = 0
        held = 0
        while not stop.is_set():
            self._check_lease()
            try:
                if self._last_sequence is None:
                    await self.reconcile()
                batch = await self.relay_once()
            except ForeignDuplicate as e:
                self._last_sequence = None
                held += 1
                if held == 1:
                    logger.error("%s", e)
                await sleep_or_stop(
                    stop, backoff(held, self._config.retry_initial, self._config.retry_max)
                )
                continue
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
            if held:
                logger.info(
                    "relay of %r: the held event is in the stream now, after %d attempts",
                    self._log.log,
                    held + 1,
                )
                held = 0
            fenced = 0
            if batch is None:
                await self._wait_for_news(stop)
            elif self._on_batch is not None:
                self._on_batch(batch)

    async def reconcile(self) -> None:
        """Moves the position up to the last notification the stream verifiably holds.

        Also learns the stream's last sequence, the fence of the next publish. Messages that
        claim this log without carrying its stored events are passed over, with one warning
        each (see :mod:`eventplatform.relay.tail`).

        Raises:
            BrokerUnavailable: JetStream did not answer.
            StreamAheadOfLog: the stream ends with another database's history of the log.
            LeaseLost: the lease was lost meanwhile.
        """
        tail = await read_tail(
            self._broker.js,
            self._config.stream,
            self._log,
            position=self.position,
            publishes=self._publishes,
            max_scan=max(MAX_SCAN, 2 * self._config.batch_size),
        )
        self.reconciliations += 1
        self._warn_of_suspects(tail.suspects)
        if tail.resume < tail.newest:
            logger.warning(
                "relay of %r: the stream holds %s:%d but not %s:%d before it; publishing from"
                " there (the later events will reach the stream twice, consumers skip them)",
                self._log.log,
                self._log.log,
                tail.newest,
                self._log.log,
                tail.resume + 1,
            )
        if tail.resume > self.position:
            if not tail.verified:
                logger.info(
                    "relay of %r: the stream's last message of the log is %d, too far back to"
                    " check every message down to the position %d; taking it as published",
                    self._log.log,
                    tail.newest,
                    self.position,
                )
            await self._record_skipped(self._prepare(tail.passed_over, 0))
            logger.info(
                "relay of %r: the stream already holds up to %d (position was %d); moving on",
                self._log.log,
                tail.resume,
                self.position,
            )
            await self._record(tail.resume)
        self._last_sequence = tail.last_sequence

    async def relay_once(self) -> RelayedBatch | None:
        """Publishes the next batch after the current position and records it.

        Returns:
            The batch, or None when the log had nothing new.

        Raises:
            BrokerUnavailable: not every message was acknowledged.
            ForeignDuplicate: JetStream took an event for someone else's message; the
                position stays before it.
            PublishError: JetStream refused a message (e.g. fenced off).
            LeaseLost: the lease was lost.
        """
        if self._last_sequence is None:
            await self.reconcile()
        limit = 1 if self._held is not None else self._config.batch_size
        started = time.perf_counter()
        notifications = await self._log.read(self.position, limit)
        if not notifications:
            return None
        assert self._last_sequence is not None  # reconcile() set it
        spans = PublishSpans()
        prepared = self._prepare(notifications, self._last_sequence, spans)
        duplicates = 0
        ack_latency = 0.0
        if prepared.messages:
            self._check_lease()
            publishing = time.perf_counter()
            publisher = FencedPublisher(self._broker.nc)
            # The first message goes alone and its ack is checked before the rest follow.
            # A message published under the relay's next id and sitting at the stream's end
            # makes JetStream drop the relay's first message as a duplicate while it is, by
            # its id, exactly the predecessor the second message's fence expects: pipelined,
            # the rest of the batch would land and the dropped event would come after them.
            # One round trip per batch; further in the batch a dropped message is never the
            # stream's last, so the fence refuses what follows it.
            try:
                acks = await self._publish(publisher, prepared, 0, 1, [])
                if len(prepared.messages) > 1:
                    acks = await self._publish(publisher, prepared, 1, len(prepared.messages), acks)
            except BaseException as e:
                spans.end(e)
                raise
            spans.end()
            ack_latency = time.perf_counter() - publishing
            duplicates = sum(1 for a in acks if a.duplicate)
            # After a duplicate someone else published (some of) these: re-read the tail.
            self._last_sequence = None if duplicates else int(acks[-1].seq)
        self._held = None
        await self._record_skipped(prepared)
        last = notifications[-1].id
        acked_at = time.time()
        await self._record(last)
        self._instruments.published(
            messages=len(prepared.messages),
            duplicates=duplicates,
            duration=time.perf_counter() - started,
            ack_latency=ack_latency,
            event_times=(
                [time_of(n.state) for n in prepared.sources]
                if self._instruments is not NO_RELAY_INSTRUMENTS
                else []
            ),
            acked_at=acked_at,
        )
        return RelayedBatch(
            first=notifications[0].id,
            last=last,
            messages=prepared.messages,
            duplicates=duplicates,
            unrouted=len(prepared.unrouted),
            oversized=len(prepared.oversized),
        )

    async def _publish(
        self,
        publisher: FencedPublisher,
        prepared: _Prepared,
        start: int,
        end: int,
        before: list[api.PubAck],
    ) -> list[api.PubAck]:
        """Publishes ``prepared.messages[start:end]`` and checks their duplicate acks.

        Returns:
            ``before`` followed by the new acks.

        Raises:
            ForeignDuplicate: one was dropped as someone else's duplicate.
            Refused: JetStream refused one (after the duplicates before it were checked).
            BrokerUnavailable: not every ack arrived.
        """
        try:
            acks = await publisher.publish_batch(
                prepared.messages[start:end], timeout=self._config.ack_timeout
            )
        except Refused as e:
            self._last_sequence = None
            acked = [*before, *e.acked]
            if any(a.duplicate for a in e.acked):
                await self._check_duplicates(prepared, acked, start)
            raise
        acked = [*before, *acks]
        if any(a.duplicate for a in acks):
            self._last_sequence = None
            await self._check_duplicates(prepared, acked, start)
        return acked

    async def _check_duplicates(
        self, prepared: _Prepared, acks: Sequence[api.PubAck], start: int
    ) -> None:
        """Compares the message each duplicate ack (from ``start`` on) points to with the event.

        nats-server answers a duplicate with the sequence of the message it took it for (2.9
        and 2.15 checked), also when that message has been deleted since: then nothing the
        stream holds carries the event, and it counts as someone else's.

        Raises:
            ForeignDuplicate: one was not the relay's; the position is recorded just before
                that event (with what was skipped before it).
        """
        indexes = [i for i in range(start, len(acks)) if acks[i].duplicate]
        stored = await asyncio.gather(
            *(get_message(self._broker.js, self._config.stream, int(acks[i].seq)) for i in indexes)
        )
        for i, message in zip(indexes, stored, strict=True):
            event = prepared.sources[i]
            if message is not None and carries(message.data, self._log.log, event):
                continue  # our own earlier publish, or a deposed leader's: nothing lost
            landed_after = sum(1 for ack in acks[i + 1 :] if not ack.duplicate)
            await self._record_skipped(prepared, before=event.id)
            if event.id - 1 > self.position:
                await self._record(event.id - 1)
            self._held = event.id
            raise ForeignDuplicate(
                self._foreign_duplicate(event, int(acks[i].seq), message, landed_after),
                notification=event.id,
                seq=int(acks[i].seq),
                landed_after=landed_after,
            )

    def _foreign_duplicate(
        self, event: Notification, seq: int, message: StoredMessage | None, landed_after: int
    ) -> str:
        log, stream = self._log.log, self._config.stream
        found = (
            "a message the stream no longer holds"
            if message is None
            else f"a message that is not this event (subject {message.subject!r})"
        )
        text = (
            f"relay of {log!r}: JetStream dropped {log}:{event.id} as a duplicate of stream"
            f" {stream!r} seq {seq}, {found}: someone else published under this event's message"
            " id (a forger, or another database's relay on this stream). The event is NOT in"
            " the stream; the relay keeps its position before it and retries until JetStream's"
            " duplicate window has forgotten the id. Find who publishes on the event subjects"
            f" (NATS authorisation should let only the relay); `eventplatform audit --log {log}`"
            " lists such messages"
        )
        if landed_after:
            text += (
                f". {landed_after} later event(s) of the batch reached the stream before it:"
                " projections that apply them will skip this one when it lands; once it has,"
                f" run `eventplatform audit --log {log} --repair` for the rebuild commands"
            )
        return text

    def _warn_of_suspects(self, suspects: Sequence[Suspect]) -> None:
        fresh = [s for s in suspects if s.seq not in self._reported]
        if not fresh:
            return
        self._reported.update(s.seq for s in fresh)
        log, stream = self._log.log, self._config.stream
        shown = "; ".join(f"seq {s.seq} claims {log}:{s.claimed}, {s.reason}" for s in fresh[:5])
        more = f" (and {len(fresh) - 5} more)" if len(fresh) > 5 else ""
        logger.warning(
            "relay of %r: stream %r holds %d message(s) claiming this log that do not carry its"
            " stored events, passed over as forged: %s%s. Delete them with `nats stream rmm %s"
            " SEQ` or `eventplatform audit --log %s --delete-extra`, and find who publishes on"
            " the event subjects",
            log,
            stream,
            len(fresh),
            shown,
            more,
            stream,
            log,
        )

    async def _warn_of_oversized(self) -> None:
        """Warns when unpublished events are larger than the server's ``max_payload``."""
        limit = int(self._broker.nc.max_payload)
        largest, over = await self._log.state_sizes(self.position, limit - _HEADER_ROOM)
        if over:
            logger.warning(
                "relay of %r: %d unpublished event(s) are too large or nearly too large for"
                " this NATS server (max_payload %d bytes; the largest event's state is %d"
                " bytes, plus envelope and headers): those that do not fit are recorded in"
                " eventplatform_oversized_events and skipped. Raise max_payload to publish"
                " them (see the README, oversized events)",
                self._log.log,
                over,
                limit,
                largest,
            )

    async def _record_skipped(self, prepared: _Prepared, *, before: int | None = None) -> None:
        """Records the batch's unrouted and oversized events (only those below ``before``)."""
        log = self._log.log
        unrouted = [u for u in prepared.unrouted if before is None or u[0] < before]
        oversized = [o for o in prepared.oversized if before is None or o[0] < before]
        if unrouted:
            await self._positions.record_unrouted(log, unrouted)
            logger.warning(
                "relay of %r: %d event(s) map to no subject, recorded as unrouted (first: %s)",
                log,
                len(unrouted),
                unrouted[0][1],
            )
        if oversized:
            await self._positions.record_oversized(log, oversized)
            for notification, topic, size, limit in oversized:
                logger.warning(
                    "relay of %r: %s:%d (%s) is %d bytes with headers, above NATS max_payload"
                    " %d: recorded in eventplatform_oversized_events and skipped; consumers"
                    " will not see it until it is republished (see the README, oversized"
                    " events)",
                    log,
                    log,
                    notification,
                    topic,
                    size,
                    limit,
                )

    async def _record(self, position: int) -> None:
        token = self._lease.token if self._lease is not None else None
        await self._positions.record(self._log.log, position, token=token)
        self.position = position

    def _check_lease(self) -> None:
        if self._lease is not None:
            self._lease.check()

    def _publishes(self, notification: Notification) -> bool:
        """Whether the relay publishes ``notification`` (routed, and small enough)."""
        prepared = self._prepare([notification], 0)
        return bool(prepared.messages)

    def _prepare(
        self,
        notifications: Sequence[Notification],
        last_sequence: int,
        spans: PublishSpans | None = None,
    ) -> _Prepared:
        """Encodes the batch, each message fenced on its predecessor (and, given ``spans``,
        carrying its trace context)."""
        prepared = _Prepared()
        messages, sources = prepared.messages, prepared.sources
        log = self._log.log
        max_payload = int(self._broker.nc.max_payload)
        roomy = max_payload - _HEADER_ROOM
        previous: str | None = None
        for n in notifications:
            subject = self._mapper(n.topic)
            if subject is not None and self._config.partitions > 1:
                # None when the mapper routed outside the prefix: no partition can take it.
                subject = partitioned_subject(
                    subject,
                    self._config.subject_prefix,
                    partition_of(n.originator_id, self._config.partitions),
                )
            if subject is None:
                prepared.unrouted.append((n.id, n.topic))
                continue
            msg_id = cloudevents.message_id(log, n.id)
            traceparent = None
            if n.traceparent is not None and spans is not None:
                traceparent = spans.begin(
                    n.traceparent,
                    subject=subject,
                    message_id=msg_id,
                    attributes={"eventplatform.log": log, "eventplatform.position": n.id},
                )
            body = cloudevents.encode(
                log=log,
                notification_id=n.id,
                aggregate_id=n.originator_id,
                version=n.originator_version,
                topic=n.topic,
                state=n.state,
                traceparent=traceparent,
            )
            headers = fence_headers(previous, last_sequence)
            if traceparent is not None:
                headers[TRACEPARENT_HEADER] = traceparent
            if len(body) > roomy:
                size = wire_size(body, msg_id, headers)
                if size > max_payload:
                    prepared.oversized.append((n.id, n.topic, size, max_payload))
                    continue
            messages.append(OutgoingMessage(subject, body, msg_id, headers))
            sources.append(n)
            previous = msg_id
        return prepared

    async def _wait_for_news(self, stop: asyncio.Event) -> None:
        # Not raced against ``stop``: cancelling a pending notifies() can leave the
        # LISTEN connection mid-protocol. Shutdown waits at most one poll interval.
        if not stop.is_set():
            await self._log.wait(self._config.poll_interval)
