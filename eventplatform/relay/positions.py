"""The relay's position per log: recorded only after the broker acknowledged up to it.

A position only grows, and a leader records it only while its lease token is current (see
:mod:`eventplatform.leases.leadership`): a deposed relay that wakes up late can move nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from eventplatform.leases.leadership import LeaseLost, relay_lease
from eventplatform.store.postgres import translate
from eventplatform.store.schema import LEASES, OVERSIZED_EVENTS, RELAY_POSITIONS, UNROUTED_EVENTS


class PostgresRelayPositions:
    """Reads and records relay positions, each in its own short autocommit statement.

    Never part of a transaction that waits on the broker: idle-in-transaction sessions are
    killed after a few seconds, and a held transaction would block vacuum.

    Args:
        conn: an autocommit async connection owned by the caller.
    """

    _select = sql.SQL("SELECT position FROM {} WHERE log = %s").format(
        sql.Identifier(RELAY_POSITIONS)
    )
    _upsert = sql.SQL(
        "INSERT INTO {t} AS t (log, position) VALUES (%s, %s) ON CONFLICT (log) DO UPDATE"
        " SET position = EXCLUDED.position, updated_at = now()"
        " WHERE t.position < EXCLUDED.position"
    ).format(t=sql.Identifier(RELAY_POSITIONS))
    # FOR SHARE on the lease row: a concurrent takeover (which updates the row) either
    # commits first, and the token no longer matches, or waits until this has recorded.
    _fenced_upsert = sql.SQL(
        "WITH lease AS ("
        " SELECT token FROM {l} WHERE name = %(lease)s AND token = %(token)s FOR SHARE),"
        " recorded AS ("
        " INSERT INTO {t} AS t (log, position) SELECT %(log)s, %(position)s FROM lease"
        " ON CONFLICT (log) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
        " WHERE t.position < EXCLUDED.position RETURNING 1)"
        " SELECT count(*) FROM lease"
    ).format(l=sql.Identifier(LEASES), t=sql.Identifier(RELAY_POSITIONS))
    _unrouted = sql.SQL(
        "INSERT INTO {} (log, notification_id, topic) VALUES (%s, %s, %s)"
        " ON CONFLICT (log, notification_id) DO NOTHING"
    ).format(sql.Identifier(UNROUTED_EVENTS))

    _oversized = sql.SQL(
        "INSERT INTO {} (log, notification_id, topic, size, max_payload)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (log, notification_id) DO UPDATE"
        " SET size = EXCLUDED.size, max_payload = EXCLUDED.max_payload"
    ).format(sql.Identifier(OVERSIZED_EVENTS))

    _unrouted_ids = sql.SQL("SELECT notification_id FROM {} WHERE log = %s").format(
        sql.Identifier(UNROUTED_EVENTS)
    )
    _oversized_ids = sql.SQL("SELECT notification_id FROM {} WHERE log = %s").format(
        sql.Identifier(OVERSIZED_EVENTS)
    )
    _forget_oversized = sql.SQL(
        "DELETE FROM {} WHERE log = %s AND notification_id = ANY(%s)"
    ).format(sql.Identifier(OVERSIZED_EVENTS))

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def get(self, log: str) -> int:
        """Returns the last position recorded for ``log`` (0 when none)."""
        try:
            cur = await self._conn.execute(self._select, (log,))
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the relay position of {log!r}") from e
        return 0 if row is None else int(row[0])

    async def record(self, log: str, position: int, *, token: int | None = None) -> None:
        """Records ``position`` for ``log``; a lower position than the stored one is ignored.

        Args:
            log: the log.
            position: the notification id every message up to which the broker acknowledged.
            token: the recording leader's fencing token; when given, nothing is recorded
                unless it is still the current token of ``log``'s lease.

        Raises:
            LeaseLost: ``token`` is no longer current.
            StoreUnavailable: PostgreSQL could not be reached.
        """
        try:
            if token is None:
                await self._conn.execute(self._upsert, (log, position))
                return
            params = {"log": log, "lease": relay_lease(log), "position": position, "token": token}
            cur = await self._conn.execute(self._fenced_upsert, params)
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"recording the relay position of {log!r}") from e
        if not row or not row[0]:
            msg = f"relay position {position} of {log!r} not recorded: lease token {token} deposed"
            raise LeaseLost(msg)

    async def record_unrouted(self, log: str, unrouted: list[tuple[int, str]]) -> None:
        """Records events whose topic maps to no subject: ``(notification id, topic)`` each.

        Idempotent: recording the same notification again changes nothing.
        """
        try:
            async with self._conn.cursor() as cur:
                await cur.executemany(self._unrouted, [(log, n, topic) for n, topic in unrouted])
        except psycopg.OperationalError as e:
            raise translate(e, f"recording unrouted events of {log!r}") from e

    async def record_oversized(self, log: str, oversized: list[tuple[int, str, int, int]]) -> None:
        """Records events too large for the broker: ``(notification id, topic, size, limit)``.

        ``size`` counts payload and headers, ``limit`` is the server's ``max_payload``.
        Idempotent: recording the same notification again updates its sizes.
        """
        try:
            async with self._conn.cursor() as cur:
                rows = [(log, n, topic, size, limit) for n, topic, size, limit in oversized]
                await cur.executemany(self._oversized, rows)
        except psycopg.OperationalError as e:
            raise translate(e, f"recording oversized events of {log!r}") from e

    async def skipped(self, log: str) -> tuple[set[int], set[int]]:
        """The notification ids recorded as unrouted and as oversized: never in the stream."""
        try:
            cur = await self._conn.execute(self._unrouted_ids, (log,))
            unrouted = {int(r[0]) for r in await cur.fetchall()}
            cur = await self._conn.execute(self._oversized_ids, (log,))
            oversized = {int(r[0]) for r in await cur.fetchall()}
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the skipped events of {log!r}") from e
        return unrouted, oversized

    async def forget_oversized(self, log: str, ids: list[int]) -> None:
        """Removes the record of oversized events that have been published since."""
        try:
            await self._conn.execute(self._forget_oversized, (log, ids))
        except psycopg.OperationalError as e:
            raise translate(e, f"updating the oversized events of {log!r}") from e
