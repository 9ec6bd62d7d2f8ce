"""The relay's position per log: recorded only after the broker acknowledged up to it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from eventplatform.postgres import translate
from eventplatform.schema import RELAY_POSITIONS


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

    async def record(self, log: str, position: int) -> None:
        """Records ``position`` for ``log``; a lower position than the stored one is ignored."""
        try:
            await self._conn.execute(self._upsert, (log, position))
        except psycopg.OperationalError as e:
            raise translate(e, f"recording the relay position of {log!r}") from e
