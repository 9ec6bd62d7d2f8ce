"""The composition root: wires settings into the relay and projection workers and runs them.

Each ``run_*`` coroutine owns its connections, reconnects after a lost database connection,
and returns when ``stop`` is set. Only one instance per log (relay) or per projection (worker)
is active at a time. Projection workers wait as hot standbys on a PostgreSQL advisory lock,
which the server releases the moment the holder's session dies; relays use a lease row with a
fencing token instead (:mod:`eventplatform.leadership`), which also works behind a
transaction-mode connection pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import ConnectionPool

from eventplatform.dead_letters import dead_letter_stream
from eventplatform.errors import BrokerUnavailable, StoreUnavailable
from eventplatform.event_log import PostgresEventLog
from eventplatform.leadership import (
    Leadership,
    LeaseConfig,
    LeaseLost,
    PostgresLeases,
    new_holder_id,
)
from eventplatform.nats_broker import NatsBroker, stream_spec
from eventplatform.positions import PostgresRelayPositions
from eventplatform.postgres import translate
from eventplatform.projection import Projection
from eventplatform.relay import Relay, RelayConfig, RelayedBatch
from eventplatform.retry import backoff, policy_from_settings, sleep_or_stop
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
    lease: LeaseConfig | None = None,
    holder: str | None = None,
) -> None:
    """Runs the relay for ``settings.log`` until ``stop`` is set.

    Several may run for one log: one leads (holds the lease), the others stand by and take
    over within ``lease.takeover_bound`` seconds when it dies, hangs or loses its database.
    Lost connections to PostgreSQL or NATS are retried with capped back-off and jitter,
    logged once per episode; none ends this coroutine. On ``stop`` the current batch's acks
    are awaited, its position recorded and the lease released.

    Args:
        settings: platform settings.
        stop: set it to shut down (the current batch finishes and is recorded).
        mapper: topic → subject (default ``<prefix>.<Aggregate>.<Event>``).
        on_batch: called after each recorded batch (demo, metrics).
        lease: leadership timing (default: 3 s ttl, takeover within 4 s).
        holder: this relay's holder id in the lease table (default ``host:pid:random``).

    Raises:
        StreamAheadOfLog: the stream holds events this log does not have.
    """
    settings.require_dsn()
    broker = NatsBroker(
        settings.nats_servers,
        name=f"relay-{settings.log}",
        max_in_flight=settings.relay_max_in_flight,
    )
    holder = holder or new_holder_id()
    lease = lease or LeaseConfig(ttl=settings.relay_lease_ttl)
    failures = 0
    try:
        if not await _relay_broker_ready(broker, settings, stop):
            return
        while not stop.is_set():
            try:
                await _lead(settings, broker, stop, mapper, on_batch, lease, holder)
            except StoreUnavailable as e:
                failures += 1
                if failures == 1:
                    logger.warning("relay lost PostgreSQL: %s; reconnecting", e)
                await sleep_or_stop(stop, backoff(failures, 0.2, 5.0))
                continue
            except LeaseLost as e:
                logger.warning("relay of %r steps down: %s", settings.log, e)
                continue
            if failures:
                logger.info("relay reconnected to PostgreSQL after %d retries", failures)
            failures = 0
    finally:
        await broker.close()


async def _relay_broker_ready(broker: NatsBroker, settings: Settings, stop: asyncio.Event) -> bool:
    """Connects and ensures the stream, retrying while NATS is away; False if stopped first."""
    failures = 0
    connected = False
    while not stop.is_set():
        try:
            if not connected:
                await _probe(settings.nats_servers)
                await broker.connect()
                connected = True
            await broker.ensure_stream(stream_spec(settings))
            if failures:
                logger.info("relay reached NATS after %d retries", failures)
            return True
        except BrokerUnavailable as e:
            failures += 1
            if failures == 1:
                logger.warning("relay cannot reach NATS: %s; retrying", e)
            await sleep_or_stop(stop, backoff(failures, 0.2, 2.0))
    return False


async def _probe(servers: list[str], timeout: float = 1.0) -> None:
    """Raises unless some server accepts a TCP connection.

    nats-py retries a refused *first* connection forever inside ``connect()`` (with
    ``max_reconnect_attempts=-1``) and does not honour cancellation there, so a relay started
    while NATS is down could never be stopped. Probing first keeps the wait in our hands.

    Raises:
        BrokerUnavailable: no server answered.
    """
    for url in servers:
        parsed = urlsplit(url)
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(
                    parsed.hostname or "127.0.0.1", parsed.port or 4222
                )
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    msg = f"no NATS server accepts connections at {', '.join(servers)}"
    raise BrokerUnavailable(msg)


async def _connect(dsn: str, what: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        raise translate(e, what) from e


async def _lead(
    settings: Settings,
    broker: NatsBroker,
    stop: asyncio.Event,
    mapper: TopicMapper | None,
    on_batch: Callable[[RelayedBatch], None] | None,
    lease_config: LeaseConfig | None,
    holder: str,
) -> None:
    """Stands by for the lease, then relays while it holds it; releases it on the way out."""
    dsn = settings.require_dsn()
    async with await _connect(dsn, "opening the lease connection") as lease_conn:
        leadership = Leadership(
            PostgresLeases(lease_conn), settings.log, holder=holder, config=lease_config
        )
        lease = await leadership.acquire(stop)
        if lease is None:
            return
        logger.info("relay %s leads log %r (lease token %d)", holder, settings.log, lease.token)
        keeper = asyncio.create_task(leadership.keep())
        try:
            async with (
                await _connect(dsn, "opening the relay's reader") as reader,
                await _connect(dsn, "opening the LISTEN connection") as listener,
            ):
                relay = Relay(
                    log=PostgresEventLog(reader, listener, settings.log),
                    broker=broker,
                    positions=PostgresRelayPositions(reader),
                    mapper=mapper or DefaultTopicMapper(settings.subject_prefix),
                    config=RelayConfig(
                        stream=settings.stream,
                        batch_size=settings.relay_batch_size,
                        poll_interval=settings.relay_poll_interval,
                    ),
                    on_batch=on_batch,
                    lease=leadership,
                )
                await relay.run(stop)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await leadership.release()


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
