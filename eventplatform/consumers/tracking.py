"""Where each projection is in each log, recorded in the projection's own transaction."""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from eventplatform.store.schema import CONSUMER_CURSORS, TRACKING, TRACKING_CHANNEL


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

    # Compare-and-set: the position moves only from the value the worker started its batch
    # from. A second worker (or a stale one) that read the same position and commits after
    # the first finds it moved and is refused, whatever it believed about its lease.
    _first = sql.SQL(
        "INSERT INTO {t} AS t (projection, log, position, stream_sequence)"
        " VALUES (%(projection)s, %(log)s, %(position)s, %(stream_sequence)s)"
        " ON CONFLICT (projection, log) DO UPDATE SET position = EXCLUDED.position,"
        " stream_sequence = GREATEST(t.stream_sequence, EXCLUDED.stream_sequence),"
        " updated_at = now() WHERE t.position = 0 RETURNING 1"
    ).format(t=sql.Identifier(TRACKING))
    _advance = sql.SQL(
        "UPDATE {t} AS t SET position = %(position)s,"
        " stream_sequence = GREATEST(t.stream_sequence, %(stream_sequence)s), updated_at = now()"
        " WHERE projection = %(projection)s AND log = %(log)s AND position = %(expected)s"
        " RETURNING 1"
    ).format(t=sql.Identifier(TRACKING))

    def advance(
        self,
        cur: psycopg.Cursor[Any],
        projection: str,
        log: str,
        *,
        expected: int,
        position: int,
        stream_sequence: int = 0,
    ) -> bool:
        """Moves the position from ``expected`` to ``position`` in the caller's transaction.

        Returns:
            False when the stored position is not ``expected`` (another worker moved it):
            the caller must roll back. True when moved; the move is announced on commit.
        """
        params = {
            "projection": projection,
            "log": log,
            "position": position,
            "stream_sequence": stream_sequence,
            "expected": expected,
        }
        cur.execute(self._first if expected == 0 else self._advance, params)
        if cur.fetchone() is None:
            return False
        cur.execute(
            "SELECT pg_notify(%s, %s)", (TRACKING_CHANNEL, f"{projection} {log} {position}")
        )
        return True

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


class PostgresConsumerCursors:
    """How far in the stream a consumer got, dead letters and skipped messages included.

    A tracked position moves only with genuine events; the cursor moves with every message
    a batch settled, so a restarted worker does not see (and dead-letter) again what it
    already settled. Written in the batch's own transaction.
    """

    _select = sql.SQL("SELECT stream_sequence FROM {} WHERE consumer = %s").format(
        sql.Identifier(CONSUMER_CURSORS)
    )
    _upsert = sql.SQL(
        "INSERT INTO {t} AS t (consumer, stream_sequence) VALUES (%s, %s)"
        " ON CONFLICT (consumer) DO UPDATE SET updated_at = now(),"
        " stream_sequence = GREATEST(t.stream_sequence, EXCLUDED.stream_sequence)"
    ).format(t=sql.Identifier(CONSUMER_CURSORS))

    def get(self, cur: psycopg.Cursor[Any], consumer: str) -> int:
        """The last stream sequence ``consumer`` settled (0 when none)."""
        cur.execute(self._select, (consumer,))
        row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def record(self, cur: psycopg.Cursor[Any], consumer: str, stream_sequence: int) -> None:
        """Moves the cursor up to ``stream_sequence`` (never down)."""
        cur.execute(self._upsert, (consumer, stream_sequence))
