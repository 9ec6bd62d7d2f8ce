"""Running a relay process: settings in, a leading (or standing-by) relay out.

:func:`run_relay` owns its connections, reconnects after a lost database or NATS connection,
and returns when ``stop`` is set. Only one relay per log is active at a time: leadership is a
lease row with a fencing token (:mod:`eventplatform.leases`), which also works behind a
transaction-mode connection pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from eventplatform.backoff import (
    STOP_GRACE,
    Stopped,
    backoff,
    sleep_or_stop,
    until_stopped,
    within_grace,
)
from eventplatform.errors import BrokerUnavailable, StoreUnavailable
from eventplatform.leases.leadership import (
    Leadership,
    LeaseConfig,
    LeaseLost,
    PostgresLeases,
    new_holder_id,
    relay_lease,
)
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.relay.event_log import PostgresEventLog
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.relay import Relay, RelayConfig, RelayedBatch
from eventplatform.relay.routing import DefaultTopicMapper, TopicMapper
from eventplatform.settings import Settings
from eventplatform.store.postgres import connect_async

logger = logging.getLogger(__name__)


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
    are awaited, its position recorded and the lease released; whatever still waits after
    :data:`~eventplatform.backoff.STOP_GRACE` seconds (a connect with a wrong password, acks
    from a NATS that went away, a hung database) is cancelled, so this returns within about a
    second in every state. What was cancelled was not recorded and is relayed again later.

    Args:
        settings: platform settings.
        stop: set it to shut down (the current batch finishes and is recorded).
        mapper: topic → subject (default ``<prefix>.<Aggregate>.<Event>``).
        on_batch: called after each recorded batch (demo, metrics).
        lease: leadership timing (default: 3 s ttl, takeover within 4 s).
        holder: this relay's holder id in the lease table (default ``host:pid:random``).

    Raises:
        StreamAheadOfLog: the stream holds events this log does not have.
        ConfigurationError: ``APP_DSN`` or ``APP_LOG`` is unset.
    """
    settings.require_dsn()
    settings.require_log()
    broker = NatsBroker.from_settings(
        settings, name=f"relay-{settings.log}", max_in_flight=settings.relay_max_in_flight
    )
    holder = holder or new_holder_id()
    lease = lease or LeaseConfig(ttl=settings.relay_lease_ttl)
    try:
        await within_grace(
            stop, _serve(settings, broker, stop, mapper, on_batch, lease, holder), STOP_GRACE
        )
    finally:
        await broker.close()


async def _serve(
    settings: Settings,
    broker: NatsBroker,
    stop: asyncio.Event,
    mapper: TopicMapper | None,
    on_batch: Callable[[RelayedBatch], None] | None,
    lease: LeaseConfig,
    holder: str,
) -> None:
    """Reaches NATS, then leads or stands by, reconnecting to PostgreSQL, until ``stop``."""
    failures = 0
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


async def _relay_broker_ready(broker: NatsBroker, settings: Settings, stop: asyncio.Event) -> bool:
    """Connects and ensures the stream, retrying while NATS is away; False if stopped first."""
    what = "relay"
    failures = 0
    while not stop.is_set():
        if not await broker.connect_until(stop, what=what, log=logger):
            return False
        try:
            await until_stopped(stop, broker.ensure_stream(stream_spec(settings)))
        except Stopped:
            return False
        except BrokerUnavailable as e:
            failures += 1
            if failures == 1:
                logger.warning("%s cannot reach JetStream: %s; retrying", what, e)
            await broker.close()
            await sleep_or_stop(stop, backoff(failures, 0.2, 2.0))
            continue
        if failures:
            logger.info("%s reached JetStream after %d retries", what, failures)
        return True
    return False


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
    async with await connect_async(dsn, "opening the lease connection") as lease_conn:
        leadership = Leadership(
            PostgresLeases(lease_conn),
            relay_lease(settings.log),
            holder=holder,
            config=lease_config,
        )
        lease = await leadership.acquire(stop)
        if lease is None:
            return
        logger.info("relay %s leads log %r (lease token %d)", holder, settings.log, lease.token)
        keeper = asyncio.create_task(leadership.keep())
        try:
            async with (
                await connect_async(dsn, "opening the relay's reader") as reader,
                await connect_async(dsn, "opening the LISTEN connection") as listener,
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
                        partitions=settings.partitions,
                        subject_prefix=settings.subject_prefix,
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
