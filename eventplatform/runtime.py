"""The composition root: wires settings into the relay and projection workers and runs them.

Each ``run_*`` coroutine owns its connections, reconnects after a lost database connection,
and returns when ``stop`` is set. Only one instance per log (relay) or per projection (worker)
is active at a time: the others wait as hot standbys on a PostgreSQL advisory lock, which the
server releases the moment the holder's session dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from eventplatform.errors import BrokerUnavailable, StoreUnavailable
from eventplatform.event_log import PostgresEventLog
from eventplatform.nats_broker import NatsBroker, stream_spec
from eventplatform.positions import PostgresRelayPositions
from eventplatform.postgres import translate
from eventplatform.projection import Projection
from eventplatform.relay import Relay, RelayConfig, RelayedBatch
from eventplatform.retry import backoff, sleep_or_stop
from eventplatform.routing import DefaultTopicMapper, TopicMapper
from eventplatform.settings import Settings
from eventplatform.worker import BatchResult, ProjectionWorker, WorkerConfig

logger = logging.getLogger(__name__)


@asynccontextmanager
async def exclusive(
    dsn: str, name: str, stop: asyncio.Event, *, poll: float = 0.5
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Holds a session advisory lock named ``name`` while the body runs.

    Waits (as a standby) until the lock is free or ``stop`` is set.

    Yields:
        The connection holding the lock; if it dies, the lock is gone with it.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        raise translate(e, f"taking the lock {name!r}") from e
    async with conn:
        announced = False
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,)
            )
            row = await cur.fetchone()
            if row and row[0]:
                break
            if not announced:
                logger.info("standing by: %s is held by another process", name)
                announced = True
            await sleep_or_stop(stop, poll)
        yield conn


async def run_relay(
    settings: Settings,
    stop: asyncio.Event,
    *,
    mapper: TopicMapper | None = None,
    on_batch: Callable[[RelayedBatch], None] | None = None,
) -> None:
    """Runs the relay for ``settings.log`` until ``stop`` is set.

    Args:
        settings: platform settings.
        stop: set it to shut down (the current batch finishes and is recorded).
        mapper: topic → subject (default ``<prefix>.<Aggregate>.<Event>``).
        on_batch: called after each recorded batch (demo, metrics).
    """
    dsn = settings.require_dsn()
    broker = NatsBroker(
        settings.nats_servers,
        name=f"relay-{settings.log}",
        max_in_flight=settings.relay_max_in_flight,
    )
    await _connect_broker(broker, stop)
    failures = 0
    try:
        await broker.ensure_stream(stream_spec(settings))
        while not stop.is_set():
            try:
                async with exclusive(dsn, f"eventplatform.relay:{settings.log}", stop) as lock:
                    if stop.is_set():
                        break
                    await _relay_while_connected(settings, broker, lock, stop, mapper, on_batch)
            except StoreUnavailable as e:
                failures += 1
                if failures == 1:
                    logger.warning("relay lost PostgreSQL: %s; reconnecting", e)
                await sleep_or_stop(stop, backoff(failures, 0.2, 5.0))
                continue
            failures = 0
    finally:
        await broker.close()


async def _relay_while_connected(
    settings: Settings,
    broker: NatsBroker,
    lock: psycopg.AsyncConnection[Any],
    stop: asyncio.Event,
    mapper: TopicMapper | None,
    on_batch: Callable[[RelayedBatch], None] | None,
) -> None:
    dsn = settings.require_dsn()
    try:
        listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        raise translate(e, "opening the LISTEN connection") from e
    async with listener:
        relay = Relay(
            log=PostgresEventLog(lock, listener, settings.log),
            broker=broker,
            positions=PostgresRelayPositions(lock),
            mapper=mapper or DefaultTopicMapper(settings.subject_prefix),
            config=RelayConfig(
                batch_size=settings.relay_batch_size,
                poll_interval=settings.relay_poll_interval,
            ),
            on_batch=on_batch,
        )
        await relay.run(stop)


async def run_projection(
    settings: Settings,
    projection: Projection,
    stop: asyncio.Event,
    *,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> None:
    """Runs a projection worker until ``stop`` is set.

    Args:
        settings: platform settings.
        projection: the read model to maintain.
        stop: set it to shut down after the current batch.
        on_batch: called after each committed batch that did something.
    """
    dsn = settings.require_dsn()
    broker = NatsBroker(settings.nats_servers, name=f"projection-{projection.name}")
    await _connect_broker(broker, stop)
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": False}
    )
    failures = 0
    try:
        pool.open(wait=False)
        await broker.ensure_stream(stream_spec(settings))
        while not stop.is_set():
            try:
                async with exclusive(dsn, f"eventplatform.projection:{projection.name}", stop):
                    if stop.is_set():
                        break
                    worker = ProjectionWorker(
                        projection=projection,
                        broker=broker,
                        pool=pool,
                        config=WorkerConfig(
                            stream=settings.stream,
                            filter_subject=f"{settings.subject_prefix}.>",
                            batch_size=settings.projection_batch_size,
                            fetch_timeout=settings.projection_fetch_timeout,
                            ack_wait=settings.ack_wait,
                        ),
                    )
                    await worker.start()
                    while not stop.is_set():
                        result = await worker.process_once()
                        if on_batch is not None and result.received:
                            on_batch(result)
                        failures = 0
            except (StoreUnavailable, BrokerUnavailable) as e:
                failures += 1
                if failures == 1:
                    logger.warning("projection %s paused: %s; retrying", projection.name, e)
                await sleep_or_stop(stop, backoff(failures, 0.2, 5.0))
    finally:
        pool.close()
        await broker.close()


async def _connect_broker(broker: NatsBroker, stop: asyncio.Event) -> None:
    failures = 0
    while True:
        try:
            await broker.connect()
            return
        except BrokerUnavailable as e:
            failures += 1
            if failures == 1:
                logger.warning("%s; retrying", e)
            if stop.is_set():
                raise
            await sleep_or_stop(stop, backoff(failures, 0.2, 5.0))
