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
from eventplatform.partitions import partition_label, partition_sql
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
        partitions: the projection's partitions; each reports its own positions and lag.
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
        partitions: int = 1,
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
        self._partitions = partitions
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
        by_key: dict[str, dict[str, int]] = {}
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
                keys = [self._projection] + [
                    partition_label(self._projection, k, self._partitions)
                    for k in range(self._partitions)
                    if self._partitions > 1
                ]
                rows = await self._probe.fetchall(
                    sql.SQL(
                        "SELECT projection, log, position FROM {} WHERE projection = ANY(%s)"
                    ).format(sql.Identifier(TRACKING)),
                    (keys,),
                )
                for key, log, position in rows:
                    by_key.setdefault(str(key), {})[str(log)] = int(position)
                positions = by_key.pop(self._projection, {})
                for log in {log for found in (positions, *by_key.values()) for log in found}:
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
        partitioned = self._partitions > 1
        self._instruments.sampled(  # a partitioned projection's positions are its partitions'
            positions={} if partitioned else positions,
            heads={} if partitioned else heads,
            pending=pending,
            ack_pending=ack_pending,
        )
        if self._partitions > 1 and self._projection is not None and by_key:
            await self._sample_partitions(by_key, heads)

    async def _sample_partitions(
        self, by_key: dict[str, dict[str, int]], heads: dict[str, int]
    ) -> None:
        """Each partition's position and lag: the events of its own not applied yet (its
        position moves only with its own events, so the log's head would overstate it)."""
        n = self._partitions
        keys = [partition_label(self._projection or "", k, n) for k in range(n)]
        behind: dict[int, dict[str, int]] = {k: {} for k in range(n)}
        try:
            for log in heads:
                positions = [by_key.get(key, {}).get(log, 0) for key in keys]
                rows = await self._probe.fetchall(
                    sql.SQL(
                        "SELECT k, count(*) FROM (SELECT {p} AS k, notification_id AS n FROM {t}"
                        " WHERE notification_id > %s) AS e"
                        " WHERE n > (%s::bigint[])[k + 1] GROUP BY k"
                    ).format(
                        p=partition_sql("originator_id", n), t=sql.Identifier(events_table(log))
                    ),
                    (min(positions), positions),
                )
                for k, count in rows:
                    behind[int(k)][log] = int(count)
        except StoreUnavailable:
            return
        for k, key in enumerate(keys):
            found = by_key.get(key, {})
            own_heads = {log: found.get(log, 0) + behind[k].get(log, 0) for log in heads}
            self._instruments.partition(k).sampled(
                positions=found, heads=own_heads, pending=None, ack_pending=None
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
