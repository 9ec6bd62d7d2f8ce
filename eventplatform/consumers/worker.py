"""The projection worker: JetStream messages in, read model and position out, exactly once.

Per batch: fetch in order, decode, drop what is at or below the tracked position, apply the
rest and record the new position in ONE PostgreSQL transaction, and ack only after the commit.
A crash anywhere leads to redelivery, and redelivered events are skipped by position.

Why the durable consumer is re-created at the tracked stream sequence on every start: a pull
consumer that still holds unacked messages from a dead worker would hand the new worker *later*
messages first; applying those would move the position past events not yet applied, and the
skip-by-position rule would then drop them. Starting the consumer exactly after the last
committed message makes PostgreSQL, not the broker, the source of truth for where we are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
import psycopg.errors
from nats.aio.msg import Msg
from nats.js import api
from psycopg_pool import ConnectionPool

from eventplatform.consumers.acking import ack_all, keep_alive
from eventplatform.consumers.dead_letters import (
    PostgresDeadLetters,
    is_dead_letter_subject,
    publish_dead_letters,
)
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.intake import read_message
from eventplatform.consumers.parking import PostgresParking
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import RetryPolicy, Sleep, is_transient
from eventplatform.consumers.tracking import PostgresTracking, TrackedPosition
from eventplatform.consumers.versions import adopt_version
from eventplatform.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ProjectionError,
    StoreUnavailable,
)
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import NatsBroker, consumer_name
from eventplatform.store.postgres import translate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a projection worker consumes.

    Attributes:
        stream: JetStream stream name.
        filter_subject: subjects to consume (default: everything under the prefix).
        batch_size: messages fetched and applied per transaction.
        fetch_timeout: seconds a fetch waits for the first message.
        ack_wait: seconds before JetStream redelivers an unacked message; while a batch
            is applied or waits out a retry, in-progress acks go out every ``ack_wait / 3``.
        policy: retries of a batch that fails transiently (deadlock, serialization); when
            they are used up, what still fails is parked. A lost database connection is
            retried for as long as it takes (nothing is parked for an outage).
        subject_prefix: the stream's subject prefix, for dead-letter subjects (default:
            ``filter_subject`` without its trailing ``.>``).
    """

    stream: str
    filter_subject: str
    batch_size: int = 500
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    subject_prefix: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.batch_size <= 10_000:
            problems.append(f"batch_size must be within 1..10000, got {self.batch_size}")
        if not 0 < self.fetch_timeout <= 60:
            problems.append(f"fetch_timeout must be within (0, 60] s, got {self.fetch_timeout}")
        if not self.ack_wait > self.fetch_timeout:
            problems.append(
                f"ack_wait ({self.ack_wait}) must exceed fetch_timeout ({self.fetch_timeout})"
            )
        if problems:
            raise ConfigurationError(
                "invalid projection worker configuration: " + "; ".join(problems)
            )

    @property
    def prefix(self) -> str:
        """The subject prefix dead letters are published under."""
        return self.subject_prefix or self.filter_subject.removesuffix(".>")


@dataclass(slots=True)
class BatchResult:
    """What one batch did.

    Attributes:
        received: messages fetched.
        applied: events applied to the read model.
        skipped: events at or below the position (redeliveries, republishes).
        dead_lettered: messages dead-lettered (undecodable, or failing to apply).
        parked: events parked behind their aggregate's open dead letter.
        positions: the new position per log after the batch.
    """

    received: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    parked: int = 0
    positions: dict[str, int] = field(default_factory=dict)


def durable_name(projection: Projection) -> str:
    """The durable consumer name of a projection (NATS forbids dots and spaces)."""
    return consumer_name(projection.name)


class ProjectionWorker:
    """Feeds one projection from JetStream.

    Args:
        projection: the read model to maintain.
        broker: connected NATS broker.
        pool: PostgreSQL pool for the read model's transactions (sync: user projection code
            is synchronous and runs in a worker thread, the one sync/async boundary).
        config: stream, subjects and batching.
        decoder: turns CloudEvents into domain events (default: the projection's
            ``event_classes``).
        sleep: waits between retries (tests inject a recorder).
    """

    def __init__(
        self,
        *,
        projection: Projection,
        broker: NatsBroker,
        pool: ConnectionPool[Any],
        config: WorkerConfig,
        decoder: EventDecoder | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.projection = projection
        self._broker = broker
        self._pool = pool
        self._config = config
        self._decoder = decoder or EventDecoder(projection.event_classes)
        self._tracking = PostgresTracking()
        self._letters = PostgresDeadLetters()
        self._parking = PostgresParking()
        self._sleep: Sleep = sleep
        self._positions: dict[str, TrackedPosition] = {}
        self._sub: Any = None

    @property
    def positions(self) -> dict[str, int]:
        """The committed position per log, as this worker last saw it."""
        return {log: p.position for log, p in self._positions.items()}

    async def start(self) -> None:
        """Loads the tracked positions and (re)creates the durable consumer after them."""
        self._positions = await asyncio.to_thread(self._load_positions)
        start_seq = max((p.stream_sequence for p in self._positions.values()), default=0) + 1
        durable = durable_name(self.projection)
        js = self._broker.js
        try:
            info = await js.stream_info(self._config.stream)
            if start_seq > info.state.last_seq + 1:
                logger.warning(
                    "projection %s tracked stream sequence %d beyond stream %s end %d "
                    "(stream re-created?): consuming from the start, skipping by position",
                    self.projection.name,
                    start_seq - 1,
                    self._config.stream,
                    info.state.last_seq,
                )
                start_seq = 1
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(self._config.stream, durable)
            await js.add_consumer(
                self._config.stream,
                api.ConsumerConfig(
                    durable_name=durable,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start_seq,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self._config.ack_wait,
                    max_ack_pending=max(1000, self._config.batch_size * 2),
                    filter_subject=self._config.filter_subject,
                ),
            )
            self._sub = await js.pull_subscribe_bind(durable=durable, stream=self._config.stream)
        except (TimeoutError, nats.errors.Error) as e:
            msg = f"cannot set up consumer {durable!r} on stream {self._config.stream!r}: {e!r}"
            raise BrokerUnavailable(msg) from e
        logger.info(
            "projection %s consumes %s from stream sequence %d (positions %s)",
            self.projection.name,
            self._config.filter_subject,
            start_seq,
            self.positions,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Processes batches until ``stop`` is set."""
        if self._sub is None:
            await self.start()
        while not stop.is_set():
            await self.process_once()

    async def process_once(self) -> BatchResult:
        """Fetches one batch and applies it; retries a transiently failing batch with back-off.

        Returns:
            What the batch did (empty when the fetch timed out).
        """
        try:
            msgs: list[Msg] = await self._sub.fetch(
                self._config.batch_size, timeout=self._config.fetch_timeout
            )
        except (TimeoutError, nats.errors.TimeoutError):
            return BatchResult()
        except nats.errors.Error as e:
            msg = f"fetch for projection {self.projection.name!r} failed: {e!r}"
            raise BrokerUnavailable(msg) from e
        policy = self._config.policy
        attempt = 0
        # Keep the messages ours while we apply and retry, instead of having them redelivered.
        async with keep_alive(msgs, self._config.ack_wait / 3):
            while True:
                attempt += 1
                isolate = attempt >= policy.attempts
                try:
                    result, letters = await asyncio.to_thread(self._apply, msgs, isolate, attempt)
                    break
                except (ProjectionError, StoreUnavailable) as e:
                    if attempt == 1:
                        logger.error(
                            "projection %s: batch failed, retrying: %s", self.projection.name, e
                        )
                    await self._sleep(policy.delay(min(attempt, max(1, policy.attempts - 1))))
        await ack_all(msgs)
        if letters:
            await publish_dead_letters(self._broker.js, self._config.prefix, letters)
        return result

    def _load_positions(self) -> dict[str, TrackedPosition]:
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                positions = self._tracking.all(cur, self.projection.name)
            with self._pool.connection() as conn:
                adopt_version(conn, self.projection)  # warns when a rebuild is due
        except psycopg.OperationalError as e:
            raise translate(e, f"loading positions of {self.projection.name!r}") from e
        return positions

    def _decode(
        self, msgs: list[Msg], result: BatchResult, positions: dict[str, TrackedPosition]
    ) -> list[_Item]:
        items: list[_Item] = []
        for m in msgs:
            if is_dead_letter_subject(self._config.prefix, m.subject):
                result.skipped += 1
                continue
            intake = read_message(m.data, self._decoder)
            envelope = intake.envelope
            if envelope is None:
                items.append(_Item(m, None, None, intake.error))
                continue
            tracked = positions.get(envelope.source, TrackedPosition(0, 0))
            if envelope.sequence <= tracked.position:
                result.skipped += 1
                continue
            positions[envelope.source] = TrackedPosition(
                envelope.sequence, m.metadata.sequence.stream
            )
            items.append(_Item(m, envelope, intake.event, intake.error))
        return items

    def _apply(
        self, msgs: list[Msg], isolate_transient: bool, attempt: int
    ) -> tuple[BatchResult, list[_Letter]]:
        result = BatchResult(received=len(msgs))
        positions = dict(self._positions)
        items = self._decode(msgs, result, positions)
        stream_seq = msgs[-1].metadata.sequence.stream if msgs else 0
        name = self.projection.name
        letters: list[_Letter] = []
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                self._parking.lock(cur, name)
                parked = self._parking.parked_aggregates(
                    cur, name, {i.envelope.subject for i in items if i.envelope}
                )
                try:
                    # Fast path: every applicable event in one savepoint, pipelined.
                    with conn.transaction():
                        events = [i.event for i in _plan(items, set(parked)) if i.kind == "apply"]
                        if events:
                            with conn.pipeline():
                                self.projection.apply_batch(cur, events)
                    failures: dict[int, str] = {}
                except Exception as e:
                    if conn.broken or (is_transient(e) and not isolate_transient):
                        raise
                    # Slow path: one savepoint per event, to find and park what fails.
                    logger.warning("projection %s: batch failed, isolating: %r", name, e)
                    failures = self._apply_one_by_one(
                        conn, cur, items, set(parked), isolate_transient
                    )
                plan = _plan(items, set(parked), failures)
                for item in plan:
                    if item.kind in ("dead", "head"):
                        letters.append(self._dead_letter(cur, item, attempt))
                    elif item.kind == "park":
                        self._park(cur, item)
                result.applied = sum(1 for i in plan if i.kind == "apply")
                result.dead_lettered = len(letters)
                result.parked = sum(1 for i in plan if i.kind == "park")
                for log, p in positions.items():
                    if p != self._positions.get(log):
                        self._tracking.record(
                            cur, name, log, p.position, max(p.stream_sequence, stream_seq)
                        )
        except psycopg.OperationalError as e:
            if conn_broken(e):
                raise translate(e, f"applying a batch to {name!r}") from e
            msg = f"projection {name!r} failed to apply a batch (transient): {e!r}"
            raise ProjectionError(msg) from e
        except Exception as e:
            msg = f"projection {name!r} failed to apply a batch: {e!r}"
            raise ProjectionError(msg) from e
        self._positions = {
            log: TrackedPosition(p.position, max(p.stream_sequence, stream_seq))
            for log, p in positions.items()
        }
        result.positions = self.positions
        return result, letters

    def _apply_one_by_one(
        self,
        conn: psycopg.Connection[Any],
        cur: psycopg.Cursor[Any],
        items: list[_Item],
        parked: set[str],
        isolate_transient: bool,
    ) -> dict[int, str]:
        failures: dict[int, str] = {}
        for index, item in enumerate(items):
            if item.envelope is None or item.error is not None:
                if item.envelope is not None:
                    parked.add(item.envelope.subject)
                continue
            if item.envelope.subject in parked:
                continue
            try:
                with conn.transaction():
                    self.projection.apply_batch(cur, [item.event])
            except Exception as e:
                if conn.broken or (is_transient(e) and not isolate_transient):
                    raise
                failures[index] = f"applying failed: {e!r}"
                parked.add(item.envelope.subject)
        return failures

    def _dead_letter(self, cur: psycopg.Cursor[Any], item: _Planned, attempt: int) -> _Letter:
        m = item.msg
        error = item.error or "unknown error"
        logger.error(
            "projection %s: dead-lettering message on %s%s: %s",
            self.projection.name,
            m.subject,
            " (parking its aggregate)" if item.kind == "head" else "",
            error,
        )
        attempts = attempt if item.envelope is not None and item.failed_applying else 1
        letter_id = self._letters.record(
            cur,
            consumer=self.projection.name,
            body=m.data,
            error=error,
            attempts=max(attempts, m.metadata.num_delivered or 1),
            subject=m.subject,
            headers=m.headers,
            envelope=item.envelope,
            parked=item.kind == "head",
        )
        return (letter_id, self.projection.name, m.subject, m.data, error, attempts)

    def _park(self, cur: psycopg.Cursor[Any], item: _Planned) -> None:
        envelope = item.envelope
        assert envelope is not None  # only events with a readable envelope are parked
        self._parking.park(
            cur,
            consumer=self.projection.name,
            aggregate=envelope.subject,
            log=envelope.source,
            sequence=envelope.sequence,
            subject=item.msg.subject,
            body=item.msg.data,
            headers=item.msg.headers,
        )


_IN_TRANSACTION_ERRORS = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)


def conn_broken(e: psycopg.OperationalError) -> bool:
    """Whether an error means the connection is gone (versus a deadlock or serialization)."""
    return not isinstance(e, _IN_TRANSACTION_ERRORS)


_Letter = tuple[int, str, str | None, bytes, str, int]


@dataclass(frozen=True, slots=True)
class _Item:
    """A decoded message: envelope None when unreadable, error set when the event is not."""

    msg: Msg
    envelope: CloudEvent | None
    event: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class _Planned:
    """What becomes of an item: ``apply``, ``dead`` (no aggregate), ``head`` (dead letter
    that parks its aggregate) or ``park`` (waits behind its aggregate's head)."""

    kind: str
    msg: Msg
    envelope: CloudEvent | None
    event: Any
    error: str | None
    failed_applying: bool = False


def _plan(
    items: list[_Item], parked: set[str], failures: dict[int, str] | None = None
) -> list[_Planned]:
    """Decides each item's fate in order: an aggregate parks from its first failure on."""
    failures = failures or {}
    planned = []
    for index, item in enumerate(items):
        envelope = item.envelope
        if envelope is None:
            kind, error = "dead", item.error
        elif envelope.subject in parked:
            kind, error = "park", None
        elif item.error is not None:
            kind, error = "head", item.error
            parked.add(envelope.subject)
        elif index in failures:
            kind, error = "head", failures[index]
            parked.add(envelope.subject)
        else:
            kind, error = "apply", None
        planned.append(
            _Planned(kind, item.msg, envelope, item.event, error, failed_applying=index in failures)
        )
    return planned


__all__ = ["BatchResult", "CloudEvent", "ProjectionWorker", "WorkerConfig", "durable_name"]
