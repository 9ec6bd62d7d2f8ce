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
import re
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.msg import Msg
from nats.js import api
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventplatform import cloudevents
from eventplatform.cloudevents import CloudEvent
from eventplatform.decoding import EventDecoder
from eventplatform.errors import (
    BrokerUnavailable,
    DecodeError,
    ProjectionError,
    StoreUnavailable,
)
from eventplatform.nats_broker import NatsBroker
from eventplatform.postgres import translate
from eventplatform.projection import Projection
from eventplatform.retry import backoff
from eventplatform.schema import DEAD_LETTERS
from eventplatform.tracking import PostgresTracking, TrackedPosition

logger = logging.getLogger(__name__)

_DURABLE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a projection worker consumes.

    Attributes:
        stream: JetStream stream name.
        filter_subject: subjects to consume (default: everything under the prefix).
        batch_size: messages fetched and applied per transaction.
        fetch_timeout: seconds a fetch waits for the first message.
        ack_wait: seconds before JetStream redelivers an unacked message.
        retry_initial: first back-off after a failed batch, in seconds.
        retry_max: cap of the back-off, in seconds.
    """

    stream: str
    filter_subject: str
    batch_size: int = 500
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    retry_initial: float = 0.1
    retry_max: float = 5.0


@dataclass(slots=True)
class BatchResult:
    """What one batch did.

    Attributes:
        received: messages fetched.
        applied: events applied to the read model.
        skipped: events at or below the position (redeliveries, republishes).
        dead_lettered: messages that could not be decoded (recorded, acked).
        positions: the new position per log after the batch.
    """

    received: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    positions: dict[str, int] = field(default_factory=dict)


def durable_name(projection: Projection) -> str:
    """The durable consumer name of a projection (NATS forbids dots and spaces)."""
    return _DURABLE_UNSAFE.sub("_", projection.name)


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
    """

    def __init__(
        self,
        *,
        projection: Projection,
        broker: NatsBroker,
        pool: ConnectionPool[Any],
        config: WorkerConfig,
        decoder: EventDecoder | None = None,
    ) -> None:
        self.projection = projection
        self._broker = broker
        self._pool = pool
        self._config = config
        self._decoder = decoder or EventDecoder(projection.event_classes)
        self._tracking = PostgresTracking()
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
        """Fetches one batch and applies it; retries a failing batch with back-off.

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
        failures = 0
        while True:
            try:
                result = await asyncio.to_thread(self._apply, msgs)
                break
            except (ProjectionError, StoreUnavailable) as e:
                failures += 1
                delay = backoff(failures, self._config.retry_initial, self._config.retry_max)
                if failures == 1:
                    logger.error(
                        "projection %s: batch failed, retrying: %s", self.projection.name, e
                    )
                # Keep the messages ours while we retry, instead of having them redelivered.
                await asyncio.gather(*(m.in_progress() for m in msgs), return_exceptions=True)
                await asyncio.sleep(delay)
        await asyncio.gather(*(m.ack() for m in msgs), return_exceptions=True)
        return result

    def _load_positions(self) -> dict[str, TrackedPosition]:
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                positions = self._tracking.all(cur, self.projection.name)
        except psycopg.OperationalError as e:
            raise translate(e, f"loading positions of {self.projection.name!r}") from e
        return positions

    def _apply(self, msgs: list[Msg]) -> BatchResult:
        result = BatchResult(received=len(msgs))
        positions = dict(self._positions)
        events: list[Any] = []
        dead: list[tuple[Msg, str]] = []
        for m in msgs:
            try:
                envelope = cloudevents.decode(m.data)
                tracked = positions.get(envelope.source, TrackedPosition(0, 0))
                if envelope.sequence <= tracked.position:
                    result.skipped += 1
                    continue
                event = self._decoder.decode(envelope)
            except DecodeError as e:
                dead.append((m, str(e)))
                continue
            events.append(event)
            positions[envelope.source] = TrackedPosition(
                envelope.sequence, m.metadata.sequence.stream
            )
        stream_seq = msgs[-1].metadata.sequence.stream if msgs else 0
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if events:
                    with conn.pipeline():
                        self.projection.apply_batch(cur, events)
                for m, error in dead:
                    self._dead_letter(cur, m, error)
                for log, p in positions.items():
                    if p != self._positions.get(log):
                        self._tracking.record(
                            cur,
                            self.projection.name,
                            log,
                            p.position,
                            max(p.stream_sequence, stream_seq),
                        )
        except psycopg.OperationalError as e:
            raise translate(e, f"applying a batch to {self.projection.name!r}") from e
        except Exception as e:
            msg = f"projection {self.projection.name!r} failed to apply a batch: {e!r}"
            raise ProjectionError(msg) from e
        self._positions = {
            log: TrackedPosition(p.position, max(p.stream_sequence, stream_seq))
            for log, p in positions.items()
        }
        result.applied = len(events)
        result.dead_lettered = len(dead)
        result.positions = self.positions
        return result

    def _dead_letter(self, cur: psycopg.Cursor[Any], m: Msg, error: str) -> None:
        logger.error(
            "projection %s: dead-lettering message on %s: %s",
            self.projection.name,
            m.subject,
            error,
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (consumer, subject, message_id, error, attempts, body)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(DEAD_LETTERS)),
            (
                self.projection.name,
                m.subject,
                (m.headers or {}).get(cloudevents.MSG_ID_HEADER),
                error,
                m.metadata.num_delivered or 1,
                m.data,
            ),
        )


__all__ = ["BatchResult", "CloudEvent", "ProjectionWorker", "WorkerConfig", "durable_name"]
