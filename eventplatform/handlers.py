"""Idempotent event handlers: side effects exactly once, retried with back-off, dead-lettered.

A handler is a synchronous callable ``func(cur, event)`` that writes with the cursor it is
given. :class:`IdempotentEventHandler` runs it in one PostgreSQL transaction together with a
marker row ``(handler, event id)`` in ``eventplatform_processed_events``: the marker's primary
key makes a redelivered, republished or replayed event a no-op, whatever order events arrive
in (the dedup key is the CloudEvents ``id``, not a position). A side effect outside the
database (an e-mail, an HTTP call) must itself be idempotent or keyed by the event id; the
marker only guarantees the handler is not *completed* twice.

:class:`HandlerConsumer` feeds a handler from a durable JetStream pull consumer: decode,
handle with retries (``asyncio.sleep`` between attempts: other consumers in the process go
on), in-progress acks while a slow handler works, dead letter when it still fails or cannot
be decoded, and ack only after the outcome is committed. Handlers do not park: a dead-lettered
event of aggregate A does not hold back A's later events (side effects rarely depend on each
other the way read-model rows do); a handler that needs that order should be a projection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.msg import Msg
from nats.js import api
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventplatform import cloudevents
from eventplatform.acking import keep_alive
from eventplatform.cloudevents import CloudEvent
from eventplatform.dead_letters import (
    PostgresDeadLetters,
    is_dead_letter_subject,
    publish_dead_letters,
)
from eventplatform.decoding import EventDecoder
from eventplatform.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EventPlatformError,
    StoreUnavailable,
)
from eventplatform.intake import read_message
from eventplatform.nats_broker import NatsBroker, consumer_name, is_consumer_name
from eventplatform.postgres import translate
from eventplatform.retry import RetryPolicy, Sleep
from eventplatform.schema import PROCESSED_EVENTS
from eventplatform.settings import Settings

logger = logging.getLogger(__name__)


#: What a handler is: a synchronous function that writes with the given cursor only.
HandlerFunc = Callable[[psycopg.Cursor[Any], Any], None]


class HandlerFailed(EventPlatformError):
    """A handler still failed after its attempts (or failed permanently).

    Attributes:
        attempts: how often it was tried.
    """

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class IdempotentEventHandler:
    """Wraps a handler with idempotency (event-id marker), a transaction and retries.

    Args:
        name: the handler's stable name: marker key, durable consumer and dead-letter owner.
        func: ``func(cur, event)``; writes with ``cur`` only, never commits.
        event_classes: the domain events it decodes (others arrive as :class:`CloudEvent`).
        strict: dead-letter event types not in ``event_classes`` instead of passing them on.
        policy: attempts and back-off (default :class:`RetryPolicy`).
        decoder: overrides the decoder built from ``event_classes``.
    """

    _mark = sql.SQL(
        "INSERT INTO {} (handler, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(PROCESSED_EVENTS))

    def __init__(
        self,
        name: str,
        func: HandlerFunc,
        *,
        event_classes: Iterable[type[Any]] = (),
        strict: bool = False,
        policy: RetryPolicy | None = None,
        decoder: EventDecoder | None = None,
    ) -> None:
        if not name or not name.strip():
            msg = "an idempotent handler needs a non-empty name (it keys its markers)"
            raise ConfigurationError(msg)
        self.name = name
        self.func = func
        self.policy = policy or RetryPolicy()
        self.decoder = decoder or EventDecoder(event_classes, strict=strict)

    def decode(self, body: bytes) -> tuple[CloudEvent, Any]:
        """Decodes a message body into its envelope and event.

        Raises:
            DecodeError: the body is not a CloudEvent this handler can read.
        """
        envelope = cloudevents.decode(body)
        return envelope, self.decoder.decode(envelope)

    def process(self, conn: psycopg.Connection[Any], envelope: CloudEvent, event: Any) -> bool:
        """One attempt, in one transaction: marker first, then the handler's writes.

        Returns:
            True when the handler ran, False when the event id was already processed.
        """
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(self._mark, (self.name, envelope.id))
            if cur.rowcount == 0:
                return False
            self.func(cur, event)
        return True

    async def handle(
        self,
        pool: ConnectionPool[Any],
        envelope: CloudEvent,
        event: Any,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> bool:
        """Processes an event, retrying per the policy; never blocks the event loop.

        Args:
            pool: where the handler's transaction runs.
            envelope: the event's envelope (its ``id`` is the dedup key).
            event: the decoded event passed to the handler.
            sleep: waits between attempts (inject a recorder in tests).
            rng: randomness for the jitter (inject a seeded one in tests).

        Returns:
            True when the handler ran, False for a duplicate.

        Raises:
            HandlerFailed: it failed permanently or on every attempt.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await asyncio.to_thread(self._process_pooled, pool, envelope, event)
            except Exception as e:
                if self.policy.should_retry(e, attempt):
                    delay = self.policy.delay(attempt, rng)
                    logger.warning(
                        "handler %s: event %s failed (attempt %d/%d), retrying in %.3fs: %r",
                        self.name,
                        envelope.id,
                        attempt,
                        self.policy.attempts,
                        delay,
                        e,
                    )
                    await sleep(delay)
                    continue
                msg = (
                    f"handler {self.name!r} failed on event {envelope.id} ({envelope.type}): {e!r}"
                )
                raise HandlerFailed(msg, attempt) from e

    def _process_pooled(self, pool: ConnectionPool[Any], envelope: CloudEvent, event: Any) -> bool:
        with pool.connection() as conn:
            return self.process(conn, envelope, event)


def idempotent(name: str, **options: Any) -> Callable[[HandlerFunc], IdempotentEventHandler]:
    """Decorator form: ``@idempotent("send-welcome", event_classes=[User.Registered])``."""

    def wrap(func: HandlerFunc) -> IdempotentEventHandler:
        return IdempotentEventHandler(name, func, **options)

    return wrap


def retry_dead_letter(
    conn: psycopg.Connection[Any], handler: IdempotentEventHandler, dead_letter_id: int
) -> str:
    """Replays one dead letter through the handler, in one transaction with its resolution.

    Returns:
        ``"applied"``, ``"duplicate"`` (the marker says it ran already) or ``"not open"``
        (already retried or discarded: nothing happens, so retrying twice is harmless).

    Raises:
        DecodeError: the message still cannot be decoded (recorded on the dead letter).
        HandlerFailed: the handler failed again (recorded on the dead letter).
        EventPlatformError: no such dead letter, or it belongs to another consumer.
    """
    letters = PostgresDeadLetters()
    try:
        with conn.transaction(), conn.cursor() as cur:
            letter = letters.lock_owned(cur, dead_letter_id, handler.name)
            if letter.status != "open":
                return "not open"
            try:
                with conn.transaction():
                    envelope, event = handler.decode(letter.body)
                    ran = handler.process(conn, envelope, event)
            except Exception as e:
                letters.note_failure(cur, letter.id, f"retry failed: {e!r}")
                failure: Exception = e
            else:
                letters.resolve(cur, letter.id, "retried")
                return "applied" if ran else "duplicate"
    except psycopg.OperationalError as e:
        raise translate(e, f"retrying dead letter {dead_letter_id}") from e
    if isinstance(failure, DecodeError):
        raise failure
    msg = f"dead letter {dead_letter_id} failed again in {handler.name!r}: {failure!r}"
    raise HandlerFailed(msg, letter.attempts + 1) from failure


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
        max_deliver: deliveries before the consumer dead-letters a message it never
            finished (crash loops); -1 for unlimited, else at least 2.
        max_ack_pending: unacked messages JetStream allows in flight (>= batch_size).
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
        }
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class HandlerBatch:
    """What one fetch did: counts of each outcome."""

    received: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    ignored: int = 0


class HandlerConsumer:
    """Feeds an :class:`IdempotentEventHandler` from a durable JetStream pull consumer.

    Args:
        handler: the handler.
        broker: connected NATS broker.
        pool: PostgreSQL pool for the handler's transactions.
        config: consumer configuration.
        sleep: waits between retries (tests inject a recorder).
        rng: randomness for jitter (tests inject a seeded one).
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
    ) -> None:
        self.handler = handler
        self._broker = broker
        self._pool = pool
        self._config = config
        self._sleep = sleep
        self._rng = rng
        self._letters = PostgresDeadLetters()
        self._sub: Any = None
        self.durable = config.durable or consumer_name(handler.name)

    async def start(self) -> None:
        """Creates (or updates) the durable consumer and binds to it.

        A handler's durable consumer is kept across restarts: it dedups by event id, so
        JetStream's own ack state is the right place to resume from.
        """
        cfg = self._config
        js = self._broker.js
        consumer = api.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait,
            max_deliver=cfg.max_deliver,
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
        batch = HandlerBatch(received=len(msgs))
        for m in msgs:
            outcome = await self._process(m)
            setattr(batch, outcome, getattr(batch, outcome) + 1)
        return batch

    async def _process(self, m: Msg) -> str:
        if is_dead_letter_subject(self._config.subject_prefix, m.subject):
            await _ack(m)
            return "ignored"
        delivered = m.metadata.num_delivered or 1
        intake = read_message(m.data, self.handler.decoder)
        envelope, event = intake.envelope, intake.event
        if envelope is None or intake.error is not None:
            await self._dead_letter(m, envelope, intake.error or "unreadable", delivered)
            return "dead_lettered"
        maximum = self._config.max_deliver
        if maximum != -1 and delivered >= maximum:
            error = f"delivered {delivered} times without an outcome (crash or ack timeout)"
            await self._dead_letter(m, envelope, error, delivered)
            return "dead_lettered"
        try:
            async with keep_alive([m], self._config.ack_wait / 3):
                ran = await self.handler.handle(
                    self._pool, envelope, event, sleep=self._sleep, rng=self._rng
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


async def run_handler(
    settings: Settings,
    handler: IdempotentEventHandler,
    stop: asyncio.Event,
    *,
    on_batch: Callable[[HandlerBatch], Awaitable[None] | None] | None = None,
) -> None:
    """Runs a handler consumer until ``stop`` is set, reconnecting after failures."""
    from eventplatform.retry import sleep_or_stop
    from eventplatform.runtime import ensure_consumer_streams

    broker = NatsBroker(settings.nats_servers, name=f"handler-{handler.name}")
    await broker.connect()
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.require_dsn(), min_size=1, max_size=2, open=False, kwargs={"autocommit": False}
    )
    failures = 0
    try:
        pool.open(wait=False)
        await ensure_consumer_streams(broker, settings)
        consumer = HandlerConsumer(
            handler=handler, broker=broker, pool=pool, config=ConsumerConfig.from_settings(settings)
        )
        while not stop.is_set():
            try:
                batch = await consumer.process_once()
                failures = 0
            except (StoreUnavailable, BrokerUnavailable) as e:
                failures += 1
                logger.warning("handler %s paused: %s; retrying", handler.name, e)
                await sleep_or_stop(stop, handler.policy.delay(min(failures, 30)))
                continue
            if on_batch is not None and batch.received:
                result = on_batch(batch)
                if result is not None:
                    await result
    finally:
        pool.close()
        await broker.close()


__all__: Sequence[str] = [
    "ConsumerConfig",
    "HandlerBatch",
    "HandlerConsumer",
    "HandlerFailed",
    "IdempotentEventHandler",
    "idempotent",
    "retry_dead_letter",
    "run_handler",
]
