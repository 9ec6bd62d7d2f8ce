"""Running consumer processes: settings in, a projection worker or a handler consumer out.

Each ``run_*`` coroutine owns its connections, reconnects after a lost database or NATS
connection, and returns when ``stop`` is set. Projection workers wait as hot standbys on a
PostgreSQL advisory lock, which the server releases the moment the holder's session dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from eventplatform.backoff import backoff, sleep_or_stop
from eventplatform.consumers.dead_letters import dead_letter_stream
from eventplatform.consumers.handler_consumer import ConsumerConfig, HandlerBatch, HandlerConsumer
from eventplatform.consumers.handlers import IdempotentEventHandler
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import policy_from_settings
from eventplatform.consumers.worker import BatchResult, ProjectionWorker, WorkerConfig
from eventplatform.errors import BrokerUnavailable, StoreUnavailable
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.settings import Settings
from eventplatform.store.postgres import translate

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
        await ensure_consumer_streams(broker, settings)
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
                            policy=policy_from_settings(settings),
                            subject_prefix=settings.subject_prefix,
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


async def ensure_consumer_streams(broker: NatsBroker, settings: Settings) -> None:
    """Creates or checks the streams a consumer needs: the events and its dead letters."""
    await broker.ensure_stream(stream_spec(settings))
    await broker.ensure_stream(
        dead_letter_stream(
            settings.stream, settings.subject_prefix, replicas=settings.stream_replicas
        )
    )


async def run_handler(
    settings: Settings,
    handler: IdempotentEventHandler,
    stop: asyncio.Event,
    *,
    on_batch: Callable[[HandlerBatch], Awaitable[None] | None] | None = None,
) -> None:
    """Runs a handler consumer until ``stop`` is set, reconnecting after failures."""
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
