"""Feeding a handler from JetStream.

:class:`HandlerConsumer` feeds a handler from a durable JetStream pull consumer: decode,
handle with retries (``asyncio.sleep`` between attempts: other consumers in the process go
on), in-progress acks while a slow handler works, dead letter when it still fails or cannot
be decoded, and ack only after the outcome is committed. Handlers do not park: a dead-lettered
event of aggregate A does not hold back A's later events (side effects rarely depend on each
other the way read-model rows do); a handler that needs that order should be a projection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.msg import Msg
from nats.js import api
from psycopg_pool import ConnectionPool

from eventplatform.consumers.acking import keep_alive, stored_at
from eventplatform.consumers.dead_letters import (
    PostgresDeadLetters,
    is_dead_letter_subject,
    publish_dead_letters,
)
from eventplatform.consumers.faults import is_fault
from eventplatform.consumers.handlers import HandlerFailed, IdempotentEventHandler
from eventplatform.consumers.intake import Intake, read_message
from eventplatform.consumers.retry import Sleep
from eventplatform.consumers.verification import StoreVerifier, Verification
from eventplatform.errors import BrokerUnavailable, ConfigurationError, DecodeError
from eventplatform.leases.fence import Fence
from eventplatform.leases.leadership import LeaseLost
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import NatsBroker, consumer_name, is_consumer_name
from eventplatform.observability.metrics import NO_CONSUMER_INSTRUMENTS, ConsumerInstruments
from eventplatform.observability.tracing import process_span
from eventplatform.settings import Settings
from eventplatform.store.postgres import translate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How a handler consumes from JetStream; refused at start-up when nonsensical.

    Attributes:
        stream: JetStream stream name.
        subject_prefix: the stream's subject prefix (dead letters go to ``<prefix>_dlq.*``).
        filter_subject: subjects to consume (default ``<prefix>.>``).
        durable: durable consumer name (default: the handler's name, made NATS-safe).
        batch_size: messages per fetch (1..10,000).
        fetch_timeout: seconds a fetch waits for the first message (0 < t <= 60).
        ack_wait: seconds JetStream waits for an ack before redelivering (> fetch_timeout);
            a slow handler sends in-progress acks every ``ack_wait / 3``.
        max_deliver: the delivery on which the consumer dead-letters a message it never
            finished (crash loops) instead of handling it again; -1 for never, else at
            least 2. Counted by the consumer (JetStream redelivers without limit).
        max_ack_pending: unacked messages JetStream allows in flight (>= batch_size).
        verification: ``"store"`` checks every message against the event store before the
            handler sees it (default); ``"broker"`` trusts NATS authorisation.
        concurrency: aggregates whose events are handled at once (each aggregate's in order).
    """

    stream: str
    subject_prefix: str
    filter_subject: str = ""
    durable: str = ""
    batch_size: int = 100
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    max_deliver: int = 20
    max_ack_pending: int = 1000
    verification: Verification = "store"
    concurrency: int = 4

    def __post_init__(self) -> None:
        problems = []
        if not self.stream:
            problems.append("stream must be set")
        if self.durable and not is_consumer_name(self.durable):
            problems.append(f"durable {self.durable!r} may hold only letters, digits, '_', '-'")
        if not 1 <= self.batch_size <= 10_000:
            problems.append(f"batch_size must be within 1..10000, got {self.batch_size}")
        if not 0 < self.fetch_timeout <= 60:
            problems.append(f"fetch_timeout must be within (0, 60] s, got {self.fetch_timeout}")
        if not self.ack_wait > self.fetch_timeout:
            problems.append(
                f"ack_wait ({self.ack_wait}) must exceed fetch_timeout ({self.fetch_timeout})"
            )
        if self.max_deliver != -1 and self.max_deliver < 2:
            problems.append(f"max_deliver must be -1 (unlimited) or >= 2, got {self.max_deliver}")
        if not 1 <= self.concurrency <= 256:
            problems.append(f"concurrency must be within 1..256, got {self.concurrency}")
        if self.max_ack_pending < self.batch_size:
            problems.append(
                f"max_ack_pending ({self.max_ack_pending}) must be >= batch_size "
                f"({self.batch_size}), or fetches starve"
            )
        if problems:
            raise ConfigurationError("invalid consumer configuration: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ConsumerConfig:
        """The consumer configuration described by ``APP_*`` settings."""
        values: dict[str, Any] = {
            "stream": settings.stream,
            "subject_prefix": settings.subject_prefix,
            "batch_size": settings.consumer_batch_size,
            "fetch_timeout": settings.consumer_fetch_timeout,
            "ack_wait": settings.ack_wait,
            "max_deliver": settings.consumer_max_deliver,
            "max_ack_pending": settings.consumer_max_ack_pending,
            "verification": settings.event_verification,
            "concurrency": settings.consumer_concurrency,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class HandlerBatch:
    """What one fetch did: counts of each outcome (``forged`` is part of ``dead_lettered``)."""

    received: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    ignored: int = 0
    forged: int = 0


class HandlerConsumer:
    """Feeds an :class:`IdempotentEventHandler` from a durable JetStream pull consumer.

    Args:
        handler: the handler.
        broker: connected NATS broker.
        pool: PostgreSQL pool for the handler's transactions.
        config: consumer configuration.
        sleep: waits between retries (tests inject a recorder).
        rng: randomness for jitter (tests inject a seeded one).
        fence: checked in every handler transaction (a partition's lease), None otherwise.
        term: the lease token of a partitioned handler's term: it then consumes through a
            JetStream consumer of its own (see :meth:`start`).
        alive: raises :class:`~eventplatform.leases.LeaseLost` once the lease is lost.
        instruments: what hears of each batch and retry (default: nothing).
    """

    def __init__(
        self,
        *,
        handler: IdempotentEventHandler,
        broker: NatsBroker,
        pool: ConnectionPool[Any],
        config: ConsumerConfig,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        fence: Fence | None = None,
        term: int | None = None,
        alive: Callable[[], None] = lambda: None,
        instruments: ConsumerInstruments = NO_CONSUMER_INSTRUMENTS,
    ) -> None:
        self.handler = handler
        self._instruments = instruments
        self._broker = broker
        self._pool = pool
        self._config = config
        self._sleep = sleep
        self._rng = rng
        self._letters = PostgresDeadLetters()
        self._verifier = StoreVerifier(config.verification)
        self._sub: Any = None
        self._fence = fence
        self._term = term
        self._alive = alive
        self.base = config.durable or consumer_name(handler.name)
        self.durable = self.base if term is None else f"{self.base}-t{term}"

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has bound this consumer to its durable consumer."""
        return self._sub is not None

    async def start(self) -> None:
        """Creates (or updates) the durable consumer and binds to it.

        A handler's durable consumer is kept across restarts: it dedups by event id, so
        JetStream's own ack state is the right place to resume from. JetStream itself
        redelivers without limit: were it to stop after ``max_deliver``, a message whose last
        delivery failed (a crash, an outage while dead-lettering) would vanish without a
        trace. This consumer counts deliveries itself and dead-letters a message on its
        ``max_deliver``-th delivery instead.

        A partitioned handler's term (``term`` given) consumes through a consumer of its own,
        ``<base>-t<token>``, that starts right after the ack floor of the earlier ones, which
        are deleted: a deposed worker can then pull nothing the new one needs, and an
        aggregate's events are handled in order across a takeover (what was handled beyond
        the floor comes again and is absorbed by the event-id markers).
        """
        cfg = self._config
        js = self._broker.js
        start: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.ALL}
        if self._term is not None:
            floor = await self._retire_earlier_terms()
            if floor:
                start = {
                    "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                    "opt_start_seq": floor + 1,
                }
        consumer = api.ConsumerConfig(
            durable_name=self.durable,
            **start,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait,
            max_deliver=-1,
            max_ack_pending=cfg.max_ack_pending,
            filter_subject=cfg.filter_subject or f"{cfg.subject_prefix}.>",
        )
        try:
            try:
                await js.consumer_info(cfg.stream, self.durable)
                await js.add_consumer(cfg.stream, consumer)  # updates the mutable fields
            except nats.js.errors.NotFoundError:
                await js.add_consumer(cfg.stream, consumer)
            self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=cfg.stream)
        except (TimeoutError, nats.errors.Error) as e:
            msg = f"cannot set up consumer {self.durable!r} on stream {cfg.stream!r}: {e!r}"
            raise BrokerUnavailable(msg) from e

    async def _retire_earlier_terms(self) -> int:
        """Deletes the earlier terms' consumers; returns their highest ack floor."""
        js = self._broker.js
        earlier = re.compile(rf"^{re.escape(self.base)}(-t\d+)?$")
        floor = 0
        try:
            for info in await js.consumers_info(self._config.stream):
                name = info.name
                if not name or name == self.durable or not earlier.match(name):
                    continue
                floor = max(floor, int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0)
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(self._config.stream, name)
        except (TimeoutError, nats.errors.Error) as e:
            msg = f"cannot retire the earlier consumers of {self.base!r}: {e!r}"
            raise BrokerUnavailable(msg) from e
        return floor

    async def run(self, stop: asyncio.Event) -> None:
        """Processes messages until ``stop`` is set."""
        if self._sub is None:
            await self.start()
        while not stop.is_set():
            await self.process_once()

    async def process_once(self) -> HandlerBatch:
        """Fetches one batch and handles each message in order.

        Raises:
            BrokerUnavailable: the fetch failed.
            StoreUnavailable: an outcome could not be committed; the message stays unacked
                and is redelivered after ``ack_wait``.
        """
        if self._sub is None:
            await self.start()
        try:
            msgs: list[Msg] = await self._sub.fetch(
                self._config.batch_size, timeout=self._config.fetch_timeout
            )
        except (TimeoutError, nats.errors.TimeoutError):
            return HandlerBatch()
        except nats.errors.Error as e:
            msg = f"fetch for handler {self.handler.name!r} failed: {e!r}"
            raise BrokerUnavailable(msg) from e
        fetched = time.perf_counter()
        intakes = await asyncio.to_thread(self._read, msgs)
        verdicts = await asyncio.to_thread(self._verify, intakes)
        batch = HandlerBatch(received=len(msgs))
        handled: list[tuple[str, str | None, float | None]] = []
        # Several aggregates in flight at once, each aggregate's messages one after another.
        lanes: dict[str, list[tuple[Msg, Intake, str | None]]] = {}
        for n, (m, intake, verdict) in enumerate(zip(msgs, intakes, verdicts, strict=True)):
            key = intake.envelope.subject if intake.envelope else f"#{n}"
            lanes.setdefault(key, []).append((m, intake, verdict))
        room = asyncio.Semaphore(self._config.concurrency)

        async def lane(items: list[tuple[Msg, Intake, str | None]]) -> None:
            async with room:
                for m, intake, verdict in items:
                    self._alive()
                    outcome = await self._settle(m, intake, verdict)
                    setattr(batch, outcome, getattr(batch, outcome) + 1)
                    if outcome == "dead_lettered" and verdict is not None:
                        batch.forged += 1
                    elif outcome == "handled" and intake.envelope is not None:
                        envelope = intake.envelope
                        handled.append((envelope.source, envelope.time, stored_at(m)))

        results = await asyncio.gather(*(lane(i) for i in lanes.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # a fault or a lost lease: the rest stays unacked, comes again
        self._observe(batch, handled, time.perf_counter() - fetched)
        return batch

    def _observe(
        self,
        batch: HandlerBatch,
        handled: list[tuple[str, str | None, float | None]],
        duration: float,
    ) -> None:
        if self._instruments is NO_CONSUMER_INSTRUMENTS:
            return
        self._instruments.settled(
            applied=batch.handled,
            skipped=batch.duplicates + batch.ignored,
            dead_lettered=batch.dead_lettered,
            forged=batch.forged,
            parked=0,
            duration=duration,
        )
        self._instruments.aged(handled, at=time.time())

    async def _settle(self, m: Msg, intake: Intake, verdict: str | None) -> str:
        try:
            return await self._process(m, intake, verdict)
        except Exception as e:
            if is_fault(e) or isinstance(e, LeaseLost):
                raise  # unacked: redelivered once the outage is over, or to the new owner
            # A defect met by this one message: it must not stop the others.
            error = f"unexpected error processing the message: {e!r}"
            await self._dead_letter(m, intake.envelope, error, 1)
            return "dead_lettered"

    def _read(self, msgs: list[Msg]) -> list[Intake]:
        return [read_message(m.data, self.handler.decoder) for m in msgs]

    def _verify(self, intakes: list[Intake]) -> list[str | None]:
        """Checks every readable message of the batch against the store, in one query per log
        (a forged event must never reach the handler's side effects)."""
        readable = [(n, i.envelope) for n, i in enumerate(intakes) if i.envelope is not None]
        if self._verifier.mode == "broker" or not readable:
            return [None] * len(intakes)
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                found = self._verifier.verify(cur, [e for _, e in readable if e is not None])
        except psycopg.OperationalError as e:
            raise translate(e, f"verifying events for {self.handler.name!r}") from e
        verdicts: list[str | None] = [None] * len(intakes)
        for (n, _), verdict in zip(readable, found, strict=True):
            verdicts[n] = verdict
        return verdicts

    async def _process(self, m: Msg, intake: Intake, forged: str | None) -> str:
        if is_dead_letter_subject(self._config.subject_prefix, m.subject):
            await _ack(m)
            return "ignored"
        delivered = m.metadata.num_delivered or 1
        envelope, event = intake.envelope, intake.event
        error = forged or intake.error
        if envelope is None or error is not None:
            await self._dead_letter(m, envelope, error or "unreadable", delivered)
            return "dead_lettered"
        maximum = self._config.max_deliver
        if maximum != -1 and delivered >= maximum:
            error = f"delivered {delivered} times without an outcome (crash or ack timeout)"
            await self._dead_letter(m, envelope, error, delivered)
            return "dead_lettered"
        attributes = {
            "eventplatform.log": envelope.source,
            "eventplatform.position": envelope.sequence,
            "messaging.message.id": envelope.id,
        }
        try:
            async with keep_alive([m], self._config.ack_wait / 3):
                with process_span(self.handler.name, envelope.traceparent, attributes):
                    ran = await self.handler.handle(
                        self._pool,
                        envelope,
                        event,
                        sleep=self._sleep,
                        rng=self._rng,
                        fence=self._fence,
                        on_retry=self._instruments.retried,
                    )
        except HandlerFailed as e:
            await self._dead_letter(m, envelope, f"{e.__cause__!r}", e.attempts)
            return "dead_lettered"
        await _ack(m)
        return "handled" if ran else "duplicates"

    async def _dead_letter(
        self, m: Msg, envelope: CloudEvent | None, error: str, attempts: int
    ) -> None:
        logger.error(
            "handler %s: dead-lettering message on %s: %s", self.handler.name, m.subject, error
        )
        letter_id = await asyncio.to_thread(self._record, m, envelope, error, attempts)
        await _ack(m)
        await publish_dead_letters(
            self._broker.js,
            self._config.subject_prefix,
            [(letter_id, self.handler.name, m.subject, m.data, error, attempts)],
        )

    def _record(self, m: Msg, envelope: CloudEvent | None, error: str, attempts: int) -> int:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                return self._letters.record(
                    cur,
                    consumer=self.handler.name,
                    body=m.data,
                    error=error,
                    attempts=attempts,
                    subject=m.subject,
                    headers=m.headers,
                    envelope=envelope,
                )
        except psycopg.OperationalError as e:
            raise translate(e, f"dead-lettering for {self.handler.name!r}") from e


def envelope_of(body: bytes) -> CloudEvent | None:
    """The envelope of a message whose event could not be decoded, if the envelope reads."""
    try:
        return cloudevents.decode(body)
    except DecodeError:
        return None


async def _ack(m: Msg) -> None:
    try:
        await m.ack()
    except (TimeoutError, nats.errors.Error) as e:
        # The outcome is committed; a redelivery is absorbed by the marker/dead-letter state.
        logger.warning("ack of %s failed (it will be redelivered): %r", m.subject, e)


__all__: Sequence[str] = ["ConsumerConfig", "HandlerBatch", "HandlerConsumer"]
