"""Running consumer processes: settings in, a projection worker or a handler consumer out.

Each ``run_*`` coroutine owns its connections and returns when ``stop`` is set. No
infrastructure fault ends it (PostgreSQL or NATS restarted, an admin shutdown, a connection
reset, a killed session, a pool that cannot connect): each is retried with capped back-off and
jitter, logged once per outage, and work resumes where the database says it stopped.

Projection workers of one projection elect one active worker by a lease (the relay's kind:
a row with a fencing token, pooler-safe); the others stand by and take over within about
``APP_PROJECTION_LEASE_TTL * 4/3`` when it dies, hangs or is cut off. Leadership only saves
work: every batch commit passes the lease fence and a compare-and-set of the position, so a
deposed worker that wakes up cannot commit. Handler consumers need no lease: competing handler
processes share one durable consumer, and the marker row per event id keeps each effect
exactly-once whoever processes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from eventplatform.backoff import backoff, sleep_or_stop
from eventplatform.consumers.dead_letters import dead_letter_stream
from eventplatform.consumers.faults import is_fault
from eventplatform.consumers.handler_consumer import ConsumerConfig, HandlerBatch, HandlerConsumer
from eventplatform.consumers.handlers import IdempotentEventHandler
from eventplatform.consumers.ownership import PartitionOwnership
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import policy_from_settings
from eventplatform.consumers.sampling import ConsumerSampler
from eventplatform.consumers.worker import (
    BatchResult,
    ProjectionWorker,
    WorkerConfig,
    term_consumer_name,
)
from eventplatform.errors import BrokerUnavailable
from eventplatform.leases.fence import LeaseFence
from eventplatform.leases.leadership import (
    Leadership,
    LeaseConfig,
    LeaseLost,
    PostgresLeases,
    new_holder_id,
    projection_lease,
)
from eventplatform.messagebus.nats_broker import NatsBroker, consumer_name
from eventplatform.observability.metrics import NO_CONSUMER_INSTRUMENTS, ConsumerInstruments
from eventplatform.observability.process import Observability
from eventplatform.partitions import partition_filter, partition_label
from eventplatform.settings import Settings
from eventplatform.store.postgres import connect_async

logger = logging.getLogger(__name__)


class Outage:
    """Logs an outage once when it starts and once when it ends; counts the back-off.

    Args:
        who: names the worker in the log lines.
    """

    def __init__(self, who: str) -> None:
        self.who = who
        self.failures = 0

    async def wait(self, stop: asyncio.Event, e: BaseException) -> None:
        """Notes a fault and sleeps the back-off (cut short by ``stop``)."""
        self.failures += 1
        if self.failures == 1:
            hint = ""
            if isinstance(e, psycopg.errors.UndefinedTable):
                hint = " (run 'eventplatform schema')"
            logger.warning("%s paused: %s%s; retrying", self.who, _describe(e), hint)
        await sleep_or_stop(stop, backoff(self.failures, 0.2, 5.0))

    def over(self) -> None:
        """Notes that work succeeded again."""
        if self.failures:
            logger.info("%s resumed after %d retries", self.who, self.failures)
            self.failures = 0


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def _keep_serving(
    who: str,
    settings: Settings,
    broker: NatsBroker,
    pool: ConnectionPool[Any],
    stop: asyncio.Event,
    outage: Outage,
    serve: Callable[[], Awaitable[None]],
) -> None:
    """Connects, checks the streams and runs ``serve`` until ``stop``, through any fault.

    A lost lease is logged and served again (standing by); an infrastructure fault is waited
    out with back-off, logged once per outage; anything else ends the worker. The pool and
    the broker are closed on the way out.
    """
    try:
        pool.open(wait=False)
        while not stop.is_set():
            try:
                if not broker.connected and not await broker.connect_until(
                    stop, what=who, log=logger
                ):
                    break
                await ensure_consumer_streams(broker, settings)
                await serve()
            except LeaseLost as e:
                logger.warning("%s steps down: %s", who, e)
            except Exception as e:
                if not is_fault(e):
                    raise
                await outage.wait(stop, e)
    finally:
        pool.close()
        await broker.close()


async def run_projection(
    settings: Settings,
    projection: Projection,
    stop: asyncio.Event,
    *,
    on_batch: Callable[[BatchResult], None] | None = None,
    lease: LeaseConfig | None = None,
    holder: str | None = None,
    observability: Observability | None = None,
) -> None:
    """Runs a projection worker until ``stop`` is set: it leads, or stands by for the lease.

    Args:
        settings: platform settings.
        projection: the read model to maintain.
        stop: set it to shut down after the current batch.
        on_batch: called after each committed batch that did something.
        lease: leadership timing (default: ``APP_PROJECTION_LEASE_TTL``).
        holder: this worker's holder id in the lease table (default ``host:pid:random``).
        observability: where its metrics and readiness go (None: nowhere); the worker then
            also looks at its positions and consumer every ``observability.interval`` s.
    """
    dsn = settings.require_dsn()
    broker = NatsBroker.from_settings(settings, name=f"projection-{projection.name}")
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn,
        min_size=1,
        max_size=2 if settings.partitions == 1 else max(2, settings.pool_size),
        open=False,
        kwargs={"autocommit": False},
    )
    lease = lease or LeaseConfig(ttl=settings.projection_lease_ttl)
    holder = holder or new_holder_id()
    who = f"projection {projection.name}"
    outage = Outage(who)
    instruments: ConsumerInstruments = NO_CONSUMER_INSTRUMENTS
    background: list[asyncio.Task[None]] = []
    if observability is not None:
        instruments = observability.consumer_metrics("projection", projection.name)
        partitioned = settings.partitions > 1
        sampler = ConsumerSampler(
            dsn=dsn,
            broker=broker,
            stream=settings.stream,
            instruments=instruments,
            health=observability.health,
            interval=observability.interval,
            projection=projection.name,
            partitions=settings.partitions,
            lease=None if partitioned else (projection_lease(projection.name), holder),
            durable=lambda token: (
                None if token is None or partitioned else term_consumer_name(projection, token)
            ),
        )
        if partitioned:  # each partition has its lease: being in the sharing is the role
            observability.health.report("role", True, "sharing partitions")
        background = _observe(observability, sampler, stop)

    async def serve() -> None:
        await _lead_projection(
            settings, projection, broker, pool, stop, on_batch, lease, holder, outage, instruments
        )

    try:
        await _keep_serving(who, settings, broker, pool, stop, outage, serve)
    finally:
        await _stop_all(background)


def _observe(
    observability: Observability, sampler: ConsumerSampler, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Starts the periodic look and the heartbeat beside the work."""
    return [
        asyncio.create_task(sampler.run(stop)),
        asyncio.create_task(observability.health.heartbeat(stop)),
    ]


async def _stop_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _lead_projection(
    settings: Settings,
    projection: Projection,
    broker: NatsBroker,
    pool: ConnectionPool[Any],
    stop: asyncio.Event,
    on_batch: Callable[[BatchResult], None] | None,
    lease_config: LeaseConfig,
    holder: str,
    outage: Outage,
    instruments: ConsumerInstruments,
) -> None:
    """Stands by for the lease (or for partitions), then runs the worker(s) while held."""
    dsn = settings.require_dsn()
    async with await connect_async(dsn, "opening the lease connection") as lease_conn:
        leases = PostgresLeases(lease_conn)

        async def serve(
            partition: int | None, leadership: Leadership, until: asyncio.Event
        ) -> None:
            await _serve_projection(
                settings,
                projection,
                broker,
                pool,
                until,
                on_batch,
                leadership,
                outage,
                partition,
                instruments if partition is None else instruments.partition(partition),
            )

        if settings.partitions > 1:
            n = settings.partitions
            await PartitionOwnership(
                leases=leases,
                consumer=f"projection:{projection.name}",
                partitions=n,
                lease_name=lambda k: projection_lease(partition_label(projection.name, k, n)),
                holder=holder,
                config=lease_config,
                serve=serve,
            ).run(stop)
            return
        name = projection_lease(projection.name)
        leadership = Leadership(leases, name, holder=holder, config=lease_config)
        lease = await leadership.acquire(stop)
        if lease is None:
            return
        logger.info(
            "projection %s: %s leads (lease token %d)", projection.name, holder, lease.token
        )
        keeper = asyncio.create_task(leadership.keep())
        try:
            await serve(None, leadership, stop)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await leadership.release()


async def _serve_projection(
    settings: Settings,
    projection: Projection,
    broker: NatsBroker,
    pool: ConnectionPool[Any],
    stop: asyncio.Event,
    on_batch: Callable[[BatchResult], None] | None,
    leadership: Leadership,
    outage: Outage,
    partition: int | None,
    instruments: ConsumerInstruments,
) -> None:
    """Runs the worker of one projection (or of one of its partitions) while the lease holds."""
    outage.over()
    lease = leadership.lease
    worker = ProjectionWorker(
        projection=projection,
        broker=broker,
        pool=pool,
        config=WorkerConfig(
            stream=settings.stream,
            filter_subject=partition_filter(settings.subject_prefix, partition),
            batch_size=settings.projection_batch_size,
            fetch_timeout=settings.projection_fetch_timeout,
            ack_wait=settings.ack_wait,
            policy=policy_from_settings(settings),
            subject_prefix=settings.subject_prefix,
            verification=settings.event_verification,
            idle_timeout=max(2.0, leadership.config.ttl),
            durable=term_consumer_name(projection, lease.token, partition),
            partition=partition,
            partitions=settings.partitions,
        ),
        fence=LeaseFence(lease.name, lease.token),
        alive=leadership.check,
        instruments=instruments,
    )
    await worker.start()
    try:
        while not stop.is_set():
            result = await worker.process_once()
            outage.over()
            if on_batch is not None and result.received:
                on_batch(result)
    finally:
        await worker.close()


async def ensure_consumer_streams(broker: NatsBroker, settings: Settings) -> None:
    """Checks that the event stream exists and creates or updates the dead-letter stream.

    The relay owns the event stream (it creates it and sets its limits; NATS authorisation
    lets consumers only read it): a consumer started first waits for it.

    Raises:
        BrokerUnavailable: the event stream does not exist yet, or NATS did not answer.
    """
    try:
        await broker.js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError as e:
        msg = (
            f"the event stream {settings.stream!r} does not exist yet: the relay creates it"
            " (start it, or check APP_STREAM)"
        )
        raise BrokerUnavailable(msg) from e
    except (TimeoutError, nats.errors.Error) as e:
        msg = f"JetStream unavailable while checking stream {settings.stream!r}: {e!r}"
        raise BrokerUnavailable(msg) from e
    await broker.ensure_stream(
        dead_letter_stream(
            settings.stream,
            settings.subject_prefix,
            replicas=settings.stream_replicas,
            max_age=settings.dlq_max_age,
            max_bytes=settings.dlq_max_bytes,
        )
    )


async def run_handler(
    settings: Settings,
    handler: IdempotentEventHandler,
    stop: asyncio.Event,
    *,
    on_batch: Callable[[HandlerBatch], Awaitable[None] | None] | None = None,
    lease: LeaseConfig | None = None,
    holder: str | None = None,
    observability: Observability | None = None,
) -> None:
    """Runs a handler consumer until ``stop`` is set; no infrastructure fault ends it.

    Unpartitioned, several may run for one handler: they share its durable consumer, and the
    marker row per event id keeps each effect exactly-once whichever of them processes an
    event. With ``APP_PARTITIONS`` > 1 they share the partitions as projection workers do
    (one worker per partition at a time, fenced), which keeps each aggregate's events in order.
    Either way ``APP_CONSUMER_CONCURRENCY`` aggregates are handled at once in a worker.
    Given ``observability``, its metrics and readiness go there, and it looks at its
    consumer's pending messages and its connections every ``observability.interval`` s.
    """
    dsn = settings.require_dsn()
    broker = NatsBroker.from_settings(settings, name=f"handler-{handler.name}")
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn,
        min_size=1,
        # Every partition this worker serves has up to APP_CONSUMER_CONCURRENCY transactions
        # open (at most 8 partitions' worth; the pool grows only as they are needed).
        max_size=settings.consumer_concurrency * min(settings.partitions, 8) + 1,
        open=False,
        kwargs={"autocommit": False},
    )
    lease = lease or LeaseConfig(ttl=settings.projection_lease_ttl)
    holder = holder or new_holder_id()
    who = f"handler {handler.name}"
    outage = Outage(who)
    instruments: ConsumerInstruments = NO_CONSUMER_INSTRUMENTS
    background: list[asyncio.Task[None]] = []
    if observability is not None:
        instruments = observability.consumer_metrics("handler", handler.name)
        durable = consumer_name(handler.name) if settings.partitions == 1 else None
        sampler = ConsumerSampler(
            dsn=dsn,
            broker=broker,
            stream=settings.stream,
            instruments=instruments,
            health=observability.health,
            interval=observability.interval,
            durable=lambda _: durable,
        )
        background = _observe(observability, sampler, stop)

    async def serve() -> None:
        if settings.partitions > 1:
            await _share_handler(
                settings, handler, broker, pool, stop, on_batch, lease, holder, outage, instruments
            )
            return
        consumer = HandlerConsumer(
            handler=handler,
            broker=broker,
            pool=pool,
            config=ConsumerConfig.from_settings(settings),
            instruments=instruments,
        )
        await _serve_handler(consumer, stop, on_batch, outage)

    try:
        await _keep_serving(who, settings, broker, pool, stop, outage, serve)
    finally:
        await _stop_all(background)


async def _serve_handler(
    consumer: HandlerConsumer,
    stop: asyncio.Event,
    on_batch: Callable[[HandlerBatch], Awaitable[None] | None] | None,
    outage: Outage,
) -> None:
    await consumer.start()
    while not stop.is_set():
        batch = await consumer.process_once()
        outage.over()
        if on_batch is not None and batch.received:
            result = on_batch(batch)
            if result is not None:
                await result


async def _share_handler(
    settings: Settings,
    handler: IdempotentEventHandler,
    broker: NatsBroker,
    pool: ConnectionPool[Any],
    stop: asyncio.Event,
    on_batch: Callable[[HandlerBatch], Awaitable[None] | None] | None,
    lease_config: LeaseConfig,
    holder: str,
    outage: Outage,
    instruments: ConsumerInstruments,
) -> None:
    """Serves this worker's share of the handler's partitions."""
    n = settings.partitions
    async with await connect_async(settings.require_dsn(), "opening the lease connection") as c:

        async def serve(k: int, leadership: Leadership, until: asyncio.Event) -> None:
            lease = leadership.lease
            consumer = HandlerConsumer(
                handler=handler,
                broker=broker,
                pool=pool,
                config=ConsumerConfig.from_settings(
                    settings,
                    filter_subject=partition_filter(settings.subject_prefix, k),
                    durable=f"{consumer_name(handler.name)}-p{k}",
                ),
                fence=LeaseFence(lease.name, lease.token),
                term=lease.token,
                alive=leadership.check,
                instruments=instruments.partition(k),
            )
            await _serve_handler(consumer, until, on_batch, outage)

        await PartitionOwnership(
            leases=PostgresLeases(c),
            consumer=f"handler:{handler.name}",
            partitions=n,
            lease_name=lambda k: f"handler:{partition_label(handler.name, k, n)}",
            holder=holder,
            config=lease_config,
            serve=serve,
        ).run(stop)
