"""A consumer process's periodic look: positions and lag per log, pending messages, connections.

Every ``interval`` seconds: the projection's committed positions (the tracking table) and each
log's head; whether this process holds the projection's lease (readiness ``role``: leader or
standby); and from JetStream, the pending and unacknowledged messages of the consumer that is
doing the work (a projection's current lease term's, a handler's durable). Like the relay's,
these come from the sources of truth, so every worker of a projection reports the same lag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
import nats.js.errors
from psycopg import sql

from eventplatform.backoff import sleep_or_stop
from eventplatform.errors import StoreUnavailable
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.observability.health import Health
from eventplatform.observability.metrics import ConsumerInstruments
from eventplatform.relay.sampling import NatsWatch
from eventplatform.store.probe import PostgresProbe
from eventplatform.store.schema import LEASES, TRACKING, events_table


class ConsumerSampler:
    """Looks at one projection or handler every ``interval`` seconds (run :meth:`run`).

    Args:
        dsn: the consumer's PostgreSQL.
        broker: the process's NATS broker.
        stream: the event stream.
        instruments: where the numbers go.
        health: where readiness goes.
        interval: seconds between looks.
        projection: the projection's name (None for a handler: no positions, no lease).
        lease: the projection's lease name and this process's holder id.
        durable: the JetStream consumer doing the work, given the lease's current token
            (None for a handler).
    """

    def __init__(
        self,
        *,
        dsn: str,
        broker: NatsBroker,
        stream: str,
        instruments: ConsumerInstruments,
        health: Health,
        interval: float,
        projection: str | None = None,
        lease: tuple[str, str] | None = None,
        durable: Callable[[int | None], str | None],
    ) -> None:
        self._probe = PostgresProbe(dsn, timeout=max(1.0, min(interval * 2, 5.0)))
        self._broker = broker
        self._nats = NatsWatch(broker)
        self._stream = stream
        self._instruments = instruments
        self._health = health
        self._interval = interval
        self._projection = projection
        self._lease = lease
        self._durable = durable

    async def run(self, stop: asyncio.Event) -> None:
        """Looks until ``stop`` is set."""
        try:
            while not stop.is_set():
                await self.sample()
                await sleep_or_stop(stop, self._interval)
        finally:
            await self._probe.close()

    async def sample(self) -> None:
        """One look."""
        self._nats.look(self._health)
        token: int | None = None
        positions: dict[str, int] = {}
        heads: dict[str, int] = {}
        try:
            if self._lease is not None:
                name, holder = self._lease
                rows = await self._probe.fetchall(
                    sql.SQL(
                        "SELECT holder = %s AND expires_at > now(), token FROM {} WHERE name = %s"
                    ).format(sql.Identifier(LEASES)),
                    (holder, name),
                )
                leading = bool(rows and rows[0][0])
                token = int(rows[0][1]) if rows else None
                self._health.report("role", True, "leader" if leading else "standby")
            if self._projection is not None:
                rows = await self._probe.fetchall(
                    sql.SQL("SELECT log, position FROM {} WHERE projection = %s").format(
                        sql.Identifier(TRACKING)
                    ),
                    (self._projection,),
                )
                positions = {str(log): int(position) for log, position in rows}
                for log in positions:
                    ((head,),) = await self._probe.fetchall(
                        sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
                            sql.Identifier(events_table(log))
                        )
                    )
                    heads[log] = int(head)
            else:
                await self._probe.fetchall("SELECT 1")
        except StoreUnavailable as e:
            self._health.report("postgres", False, str(e))
        else:
            self._health.report("postgres", True)
        pending, ack_pending = await self._pending(self._durable(token))
        self._instruments.sampled(
            positions=positions, heads=heads, pending=pending, ack_pending=ack_pending
        )

    async def _pending(self, durable: str | None) -> tuple[int | None, int | None]:
        if durable is None or not self._broker.connected:
            return None, None
        try:
            async with asyncio.timeout(max(1.0, min(self._interval * 2, 5.0))):
                info = await self._broker.js.consumer_info(self._stream, durable)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
            return None, None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
