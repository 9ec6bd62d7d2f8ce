"""The projection worker: JetStream messages in, read model and position out, exactly once.

Per batch: fetch in order, read every message without trusting it, then ONE PostgreSQL
transaction (:mod:`~eventplatform.consumers.batch`) verifies, applies, dead-letters, moves the
position and passes the lease fence; acks go out only after the commit. A crash anywhere leads
to redelivery, and redelivered events are skipped by position.

Exactly-once rests on the fence and the position's compare-and-set, not on being the only
worker: a worker that lost its lease (it hung, lost its connection, was split from the
database) has its next commit refused, stops, and stands by.

Why the consumer is created afresh, after the last settled stream sequence, for every lease
term, under a name of its own (``<projection>-t<token>``): a pull consumer that still held
unacked messages of a dead or deposed worker would hand the new worker *later* messages first;
applying those would move the position past events not yet applied, and the skip-by-position
rule would then drop them. A consumer per term cannot be shared with a deposed worker (its old
consumer is deleted), and starting exactly after the last settled message makes PostgreSQL,
not the broker, the source of truth for where we are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from psycopg_pool import ConnectionPool

from eventplatform.consumers.acking import ack_all, keep_alive, nak_all, stored_at
from eventplatform.consumers.batch import BatchApplier, BatchResult, Letter
from eventplatform.consumers.dead_letters import publish_dead_letters
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.intake import Intake, read_message
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import RetryPolicy, Sleep
from eventplatform.consumers.verification import StoreVerifier, Verification
from eventplatform.consumers.versions import PostgresProjectionVersions, adopt_version
from eventplatform.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ProjectionError,
    StoreUnavailable,
)
from eventplatform.leases.fence import Fence
from eventplatform.messagebus.nats_broker import NatsBroker, consumer_name
from eventplatform.observability import tracing
from eventplatform.observability.metrics import NO_CONSUMER_INSTRUMENTS, ConsumerInstruments

logger = logging.getLogger(__name__)

#: Seconds an abandoned per-term consumer lives on the server before it deletes it itself.
CONSUMER_INACTIVE_THRESHOLD = 3600.0


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
            they are used up, what still fails is parked, and a batch that still cannot be
            committed is settled one message per transaction. A lost database connection is
            retried for as long as the lease lasts (nothing is parked for an outage).
        subject_prefix: the stream's subject prefix, for dead-letter subjects (default:
            ``filter_subject`` without its trailing ``.>``).
        verification: ``"store"`` checks every message against the event store (default);
            ``"broker"`` trusts NATS authorisation (read models apart from the store).
        idle_timeout: seconds PostgreSQL lets a batch transaction sit idle before it ends it
            (a hung worker's locks go with it).
        durable: the JetStream consumer's name (default: the projection's name, NATS-safe).
        partition: the partition this worker applies (None: not partitioned); its
            ``filter_subject`` must be that partition's (``<prefix>.<k>.>``).
        partitions: the stream's partitions (``APP_PARTITIONS``).
    """

    stream: str
    filter_subject: str
    batch_size: int = 500
    fetch_timeout: float = 1.0
    ack_wait: float = 30.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    subject_prefix: str = ""
    verification: Verification = "store"
    idle_timeout: float = 5.0
    durable: str = ""
    partition: int | None = None
    partitions: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.partition is not None and not 0 <= self.partition < self.partitions:
            problems.append(
                f"partition must be within 0..{self.partitions - 1}, got {self.partition}"
            )
        if not 1 <= self.batch_size <= 10_000:
            problems.append(f"batch_size must be within 1..10000, got {self.batch_size}")
        if not 0 < self.fetch_timeout <= 60:
            problems.append(f"fetch_timeout must be within (0, 60] s, got {self.fetch_timeout}")
        if not self.ack_wait > self.fetch_timeout:
            problems.append(
                f"ack_wait ({self.ack_wait}) must exceed fetch_timeout ({self.fetch_timeout})"
            )
        if not 1 <= self.idle_timeout <= 3600:
            problems.append(f"idle_timeout must be within 1..3600 s, got {self.idle_timeout}")
        if problems:
            raise ConfigurationError(
                "invalid projection worker configuration: " + "; ".join(problems)
            )

    @property
    def prefix(self) -> str:
        """The subject prefix dead letters are published under."""
        return self.subject_prefix or self.filter_subject.removesuffix(".>")


def durable_name(projection: Projection) -> str:
    """The base JetStream consumer name of a projection (NATS forbids dots and spaces)."""
    return consumer_name(projection.name)


def term_consumer_name(projection: Projection, token: int, partition: int | None = None) -> str:
    """The consumer of one lease term: ``<projection>-t<token>``, or ``<projection>-p<k>-t<token>``
    for partition k."""
    return f"{_base_name(projection, partition)}-t{token}"


def _base_name(projection: Projection, partition: int | None) -> str:
    base = durable_name(projection)
    return base if partition is None else f"{base}-p{partition}"


def _noop() -> None:
    return None


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Marks a fetch ahead's failure as seen: whoever awaits it raises it; nobody may, when
    the worker is dropped (a lost lease, a closed broker)."""
    if not task.cancelled():
        task.exception()


class ProjectionWorker:
    """Feeds one projection from JetStream.

    Args:
        projection: the read model to maintain.
        broker: connected NATS broker.
        pool: PostgreSQL pool for the read model's transactions.
        config: stream, subjects and batching.
        decoder: turns CloudEvents into domain events (default: the projection's
            ``event_classes``).
        sleep: waits between retries (tests inject a recorder).
        fence: the lease fence every commit passes (default: none; tests and tools only).
        alive: raises :class:`~eventplatform.leases.LeaseLost` once the lease is lost; asked
            before every fetch and retry (default: never raises).
        instruments: what hears of each settled batch and retry (default: nothing).
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
        fence: Fence | None = None,
        alive: Callable[[], None] = _noop,
        instruments: ConsumerInstruments = NO_CONSUMER_INSTRUMENTS,
    ) -> None:
        self.projection = projection
        self._instruments = instruments
        self._broker = broker
        self._pool = pool
        self._config = config
        self._decoder = decoder or EventDecoder(projection.event_classes)
        self._sleep: Sleep = sleep
        self._alive = alive
        self._batches = BatchApplier(
            projection=projection,
            pool=pool,
            prefix=config.prefix,
            verifier=StoreVerifier(config.verification),
            fence=fence,
            idle_timeout=config.idle_timeout,
            decoder=self._decoder,
            partition=config.partition,
            partitions=config.partitions,
        )
        self.durable = config.durable or durable_name(projection)
        self._sub: Any = None
        #: The next batch, fetched and read while the current one is in its transaction.
        self._next: asyncio.Task[tuple[list[Msg], list[Intake]]] | None = None

    @property
    def positions(self) -> dict[str, int]:
        """The committed position per log, as this worker last saw it."""
        return {log: p.position for log, p in self._batches.positions.items()}

    async def start(self) -> None:
        """Loads the committed positions and creates this worker's consumer after them.

        Earlier consumers of the projection (other terms, the name used before terms) are
        deleted first, so a deposed worker cannot keep pulling messages this one needs.
        """
        settled = await asyncio.to_thread(self._load)
        start_seq = settled + 1
        js = self._broker.js
        try:
            info = await js.stream_info(self._config.stream)
            if start_seq > info.state.last_seq + 1:
                logger.warning(
                    "projection %s settled stream sequence %d beyond stream %s end %d "
                    "(stream re-created?): consuming from the start, skipping by position",
                    self.projection.name,
                    settled,
                    self._config.stream,
                    info.state.last_seq,
                )
                start_seq = 1
            await self._delete_earlier_consumers()
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(self._config.stream, self.durable)
            await js.add_consumer(
                self._config.stream,
                api.ConsumerConfig(
                    durable_name=self.durable,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start_seq,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self._config.ack_wait,
                    max_ack_pending=max(1000, self._config.batch_size * 2),
                    filter_subject=self._config.filter_subject,
                    inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
                ),
            )
            self._sub = await js.pull_subscribe_bind(
                durable=self.durable, stream=self._config.stream
            )
        except (TimeoutError, nats.errors.Error) as e:
            msg = (
                f"cannot set up consumer {self.durable!r} on stream {self._config.stream!r}: {e!r}"
            )
            raise BrokerUnavailable(msg) from e
        logger.info(
            "projection %s consumes %s from stream sequence %d as %s (positions %s)",
            self.projection.name,
            self._config.filter_subject,
            start_seq,
            self.durable,
            self.positions,
        )

    async def _delete_earlier_consumers(self) -> None:
        base = _base_name(self.projection, self._config.partition)
        earlier = re.compile(rf"^{re.escape(base)}(-t\d+)?$")
        js = self._broker.js
        for consumer in await js.consumers_info(self._config.stream):
            name = consumer.name
            if name and name != self.durable and earlier.match(name):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(self._config.stream, name)
                logger.info("projection %s: deleted the earlier consumer %s", base, name)

    def _load(self) -> int:
        settled = self._batches.load()
        with self._pool.connection() as conn:
            adopt_version(conn, self.projection)  # warns when a rebuild is due
            with conn.transaction(), conn.cursor() as cur:
                PostgresProjectionVersions().adopt_partitions(
                    cur, self.projection, self._config.partitions
                )
        return settled

    async def run(self, stop: asyncio.Event) -> None:
        """Processes batches until ``stop`` is set."""
        if self._sub is None:
            await self.start()
        try:
            while not stop.is_set():
                await self.process_once()
        finally:
            await self.close()

    async def process_once(self) -> BatchResult:
        """Settles one batch; retries a failing batch with back-off.

        Pipelined: while one batch is in its transaction, the next is fetched and read (the
        transaction mostly waits on PostgreSQL, so this costs the current batch nothing). The
        next batch is only ever settled after the current one, and acked after its own commit.

        Returns:
            What the batch did (empty when the fetch timed out).

        Raises:
            LeaseLost: the lease is lost (or a commit was fenced off); nothing of the batch
                was committed or acked: stand by (and :meth:`close` this worker).
            BrokerUnavailable: the fetch failed.
        """
        self._alive()
        upcoming, self._next = self._next, None
        msgs, intakes = await (upcoming or self._fetch_and_read())
        if not msgs:
            return BatchResult()
        fetched = time.perf_counter()
        self._next = asyncio.create_task(self._fetch_and_read())
        self._next.add_done_callback(_retrieved)
        # Keep the messages ours while we apply and retry, instead of having them redelivered.
        async with keep_alive(msgs, self._config.ack_wait / 3):
            result, letters = await self._settle(msgs, intakes)
        deferred = set(result.deferred)
        await ack_all([m for n, m in enumerate(msgs) if n not in deferred])
        if deferred:
            await nak_all([msgs[n] for n in sorted(deferred)], delay=1.0)
        if letters:
            await publish_dead_letters(self._broker.js, self._config.prefix, letters)
        self._observe(result, msgs, time.perf_counter() - fetched)
        return result

    def _observe(self, result: BatchResult, msgs: list[Msg], duration: float) -> None:
        """Tells the instruments what the batch did; records the process spans of its events."""
        instruments = self._instruments
        if instruments is not NO_CONSUMER_INSTRUMENTS:
            instruments.settled(
                applied=result.applied,
                skipped=result.skipped,
                dead_lettered=result.dead_lettered,
                forged=result.forged,
                parked=result.parked,
                duration=duration,
            )
            instruments.aged(
                [
                    (
                        envelope.source,
                        envelope.time,
                        None if index is None else stored_at(msgs[index]),
                    )
                    for envelope, index in result.applied_events
                ],
                at=result.committed_ns / 1e9,
            )
        if result.applied_events and tracing.enabled():
            sampled = [
                (
                    e.traceparent,
                    {"eventplatform.log": e.source, "eventplatform.position": e.sequence},
                )
                for e, _ in result.applied_events
                if e.traceparent is not None and tracing.is_sampled(e.traceparent)
            ]
            if sampled:
                tracing.record_processed(
                    self.projection.name,
                    sampled,
                    start_ns=result.began_ns,
                    end_ns=result.committed_ns,
                )

    async def close(self) -> None:
        """Stops fetching ahead (what was fetched ahead is redelivered to whoever goes on)."""
        upcoming, self._next = self._next, None
        if upcoming is not None:
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upcoming

    async def _fetch_and_read(self) -> tuple[list[Msg], list[Intake]]:
        try:
            msgs: list[Msg] = await self._sub.fetch(
                self._config.batch_size, timeout=self._config.fetch_timeout
            )
        except (TimeoutError, nats.errors.TimeoutError):
            return [], []
        except nats.errors.Error as e:
            msg = f"fetch for projection {self.projection.name!r} failed: {e!r}"
            raise BrokerUnavailable(msg) from e
        return msgs, await asyncio.to_thread(self._read, msgs)

    def _read(self, msgs: list[Msg]) -> list[Intake]:
        return [read_message(m.data, self._decoder) for m in msgs]

    async def _settle(
        self, msgs: list[Msg], intakes: list[Intake]
    ) -> tuple[BatchResult, list[Letter]]:
        policy = self._config.policy
        attempt = 0
        outage = 0
        while True:
            attempt += 1
            self._alive()
            try:
                return await asyncio.to_thread(
                    self._batches.apply,
                    msgs,
                    intakes,
                    isolate=attempt >= policy.attempts,
                    attempt=attempt,
                )
            except StoreUnavailable as e:
                # An outage parks nothing and dead-letters nothing: wait for the database
                # for as long as the lease lasts (``alive`` ends it when it runs out).
                outage += 1
                attempt -= 1
                if outage == 1:
                    logger.warning("projection %s paused: %s", self.projection.name, e)
                await self._sleep(policy.delay(min(outage, 8)))
            except ProjectionError as e:
                if attempt == 1:
                    logger.error(
                        "projection %s: batch failed, retrying: %s", self.projection.name, e
                    )
                self._instruments.retried()
                if attempt > policy.attempts:
                    return await self._settle_singly(msgs, intakes, attempt)
                await self._sleep(policy.delay(min(attempt, max(1, policy.attempts - 1))))

    async def _settle_singly(
        self, msgs: list[Msg], intakes: list[Intake], attempt: int
    ) -> tuple[BatchResult, list[Letter]]:
        """The last resort for a batch that cannot be committed: one message per transaction,
        so that whatever fails is isolated to its own message and the rest goes on."""
        logger.error(
            "projection %s: settling a failing batch of %d one message at a time",
            self.projection.name,
            len(msgs),
        )
        total = BatchResult(received=len(msgs))
        letters: list[Letter] = []
        for n, (msg, intake) in enumerate(zip(msgs, intakes, strict=True)):
            self._alive()
            try:
                result, found = await asyncio.to_thread(
                    self._batches.apply, [msg], [intake], isolate=True, attempt=attempt
                )
            except ProjectionError as e:
                letter = await asyncio.to_thread(
                    self._batches.record_unprocessable, msg, f"unprocessable: {e}", attempt
                )
                total.dead_lettered += 1
                letters.append(letter)
                continue
            for name in ("applied", "skipped", "dead_lettered", "forged", "parked"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.applied_events += [
                (e, None if i is None else n) for e, i in result.applied_events
            ]
            total.began_ns = total.began_ns or result.began_ns
            total.committed_ns = result.committed_ns
            letters += found
        total.positions = self.positions
        return total, letters


__all__ = [
    "BatchResult",
    "ProjectionWorker",
    "WorkerConfig",
    "durable_name",
    "term_consumer_name",
]
