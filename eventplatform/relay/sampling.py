"""The relay process's periodic look: log head, recorded position, leadership, connections.

Every ``interval`` seconds, one query reads what PostgreSQL says (the log's head, the relay
position every relay of the log shares, whether this process holds the lease), and the NATS
client is asked whether it is connected and how often it reconnected. The answers feed the
gauges (lag = head - position, leader 0/1) and readiness (``postgres``, ``nats``, ``role``).
The database is the source of truth, so leader and standbys report the same lag, and the
leader gauge is what the lease table says, not what the process believes.
"""

from __future__ import annotations

import asyncio

from psycopg import sql

from eventplatform.backoff import sleep_or_stop
from eventplatform.errors import StoreUnavailable
from eventplatform.leases.leadership import relay_lease
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.observability.health import Health
from eventplatform.observability.metrics import RelayInstruments
from eventplatform.store.probe import PostgresProbe
from eventplatform.store.schema import LEASES, RELAY_POSITIONS, events_table


class NatsWatch:
    """Connectivity and reconnects of a process's NATS client, for readiness and a counter."""

    def __init__(self, broker: NatsBroker) -> None:
        self._broker = broker
        self._reconnects = 0

    def look(self, health: Health) -> int:
        """Reports ``nats`` to ``health``; returns the reconnects since the last look."""
        connected = False
        reconnects = self._reconnects
        if self._broker.connected:
            nc = self._broker.nc
            connected = nc.is_connected
            reconnects = int(nc.stats.get("reconnects", 0))
        health.report("nats", connected, "" if connected else "not connected")
        fresh = max(reconnects - self._reconnects, 0)
        self._reconnects = reconnects
        return fresh


class RelaySampler:
    """Looks at the relay's log every ``interval`` seconds (run :meth:`run` as a task).

    Args:
        dsn: the relay's PostgreSQL.
        log: the log.
        holder: this process's lease holder id.
        broker: the process's NATS broker.
        instruments: where the numbers go.
        health: where readiness goes.
        interval: seconds between looks.
    """

    def __init__(
        self,
        *,
        dsn: str,
        log: str,
        holder: str,
        broker: NatsBroker,
        instruments: RelayInstruments,
        health: Health,
        interval: float,
    ) -> None:
        self._probe = PostgresProbe(dsn, timeout=max(1.0, min(interval * 2, 5.0)))
        self._nats = NatsWatch(broker)
        self._instruments = instruments
        self._health = health
        self._interval = interval
        self._params = {"log": log, "holder": holder, "lease": relay_lease(log)}
        self._query = sql.SQL(
            "SELECT (SELECT coalesce(max(notification_id), 0) FROM {events}),"
            " (SELECT position FROM {positions} WHERE log = %(log)s),"
            " (SELECT holder = %(holder)s AND expires_at > now() FROM {leases}"
            "  WHERE name = %(lease)s)"
        ).format(
            events=sql.Identifier(events_table(log)),
            positions=sql.Identifier(RELAY_POSITIONS),
            leases=sql.Identifier(LEASES),
        )

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
        for _ in range(self._nats.look(self._health)):
            self._instruments.reconnected("nats")
        try:
            ((head, position, leading),) = await self._probe.fetchall(self._query, self._params)
        except StoreUnavailable as e:
            self._health.report("postgres", False, str(e))
            return
        self._health.report("postgres", True)
        self._health.report("role", True, "leader" if leading else "standby")
        self._instruments.sampled(head=int(head), position=int(position or 0), leader=bool(leading))
