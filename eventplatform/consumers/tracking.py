"""Where each projection is in each log, recorded in the projection's own transaction."""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from eventplatform.store.schema import TRACKING, TRACKING_CHANNEL


class TrackedPosition(NamedTuple):
    """A projection's position in one log.

    Attributes:
        position: the highest notification id applied (0 before the first).
        stream_sequence: the JetStream stream sequence of that message (0 before the first).
    """

    position: int
    stream_sequence: int


class PostgresTracking:
    """Reads and records projection positions with the caller's cursor.

    Recording goes through the caller's cursor so it commits, or rolls back, together with
    the read-model writes: that is what makes a projection's effect exactly-once.
    """

    _select = sql.SQL(
        "SELECT position, stream_sequence FROM {} WHERE projection = %s AND log = %s"
    ).format(sql.Identifier(TRACKING))
    _select_all = sql.SQL(
        "SELECT log, position, stream_sequence FROM {} WHERE projection = %s"
    ).format(sql.Identifier(TRACKING))
    # The WHERE on the upsert keeps the position from ever moving backwards, whoever writes.
    _upsert = sql.SQL(
        "INSERT INTO {t} AS t (projection, log, position, stream_sequence) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (projection, log) DO UPDATE SET position = EXCLUDED.position,"
        " stream_sequence = GREATEST(t.stream_sequence, EXCLUDED.stream_sequence),"
        " updated_at = now() WHERE t.position < EXCLUDED.position"
    ).format(t=sql.Identifier(TRACKING))

    def get(self, cur: psycopg.Cursor[Any], projection: str, log: str) -> TrackedPosition:
        """Returns the projection's position in ``log`` (zeros when it has none)."""
        cur.execute(self._select, (projection, log))
        row = cur.fetchone()
        return TrackedPosition(0, 0) if row is None else TrackedPosition(int(row[0]), int(row[1]))

    def all(self, cur: psycopg.Cursor[Any], projection: str) -> dict[str, TrackedPosition]:
        """Returns the projection's position in every log it has seen."""
        cur.execute(self._select_all, (projection,))
        return {row[0]: TrackedPosition(int(row[1]), int(row[2])) for row in cur.fetchall()}

    def record(
        self,
        cur: psycopg.Cursor[Any],
        projection: str,
        log: str,
        position: int,
        stream_sequence: int = 0,
    ) -> None:
        """Records a new position in the caller's transaction and announces it on commit."""
        cur.execute(self._upsert, (projection, log, position, stream_sequence))
        cur.execute(
            "SELECT pg_notify(%s, %s)", (TRACKING_CHANNEL, f"{projection} {log} {position}")
        )
