"""Read-your-writes: wait until a projection has applied a given position, without sleeping."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from eventplatform.errors import WaitTimeout
from eventplatform.partitions import partition_label, partition_sql
from eventplatform.store.postgres import connect, like_prefix, translate
from eventplatform.store.schema import (
    PROJECTION_VERSIONS,
    TRACKING,
    TRACKING_CHANNEL,
    events_table,
)

_POSITION = sql.SQL("SELECT position FROM {} WHERE projection = %s AND log = %s").format(
    sql.Identifier(TRACKING)
)
_PARTITIONS = sql.SQL("SELECT partitions FROM {} WHERE projection = %s").format(
    sql.Identifier(PROJECTION_VERSIONS)
)
_PARTITION_POSITIONS = sql.SQL(
    "SELECT projection, position FROM {} WHERE log = %s AND projection LIKE %s"
).format(sql.Identifier(TRACKING))


def applied_up_to(conn: psycopg.Connection[Any], projection: str, log: str, position: int) -> int:
    """How far ``projection`` has applied ``log``, as seen from ``position``.

    A projection in one partition: its tracked position. In ``n`` partitions each partition's
    position moves only with its own events, so the projection has applied ``position`` when
    every partition is there, or has no event of its own in between; the answer is then
    ``position``, else the lowest position of a partition that still has events to apply.
    """
    row = conn.execute(_PARTITIONS, (projection,)).fetchone()
    n = int(row[0]) if row else 1
    if n == 1:
        row = conn.execute(_POSITION, (projection, log)).fetchone()
        return int(row[0]) if row else 0
    pattern = like_prefix(projection + "#")
    found = dict(conn.execute(_PARTITION_POSITIONS, (log, pattern)).fetchall())
    positions = [int(found.get(partition_label(projection, k, n), 0)) for k in range(n)]
    low = min(positions)
    if low >= position:
        return low
    try:
        ahead = conn.execute(
            sql.SQL(
                "SELECT {p} AS k, max(notification_id) FROM {t}"
                " WHERE notification_id > %s AND notification_id <= %s GROUP BY k"
            ).format(p=partition_sql("originator_id", n), t=sql.Identifier(events_table(log))),
            (low, position),
        ).fetchall()
    except psycopg.errors.UndefinedTable:  # the store lives elsewhere: every partition counts
        return low
    behind = [positions[int(k)] for k, last in ahead if int(last) > positions[int(k)]]
    return min(behind) if behind else position


def wait_for(dsn: str, *, projection: str, log: str, position: int, timeout: float = 5.0) -> int:
    """Blocks until ``projection`` has applied ``position`` of ``log``.

    LISTENs on the tracking channel first and then reads the position, so a commit that
    happens between the two is not missed; every committed batch announces itself, so the
    wait wakes on the commit itself rather than on a polling interval.

    Args:
        dsn: PostgreSQL connection string.
        projection: projection name.
        log: log name (the application that wrote the events).
        position: the notification id a command returned.
        timeout: seconds to wait at most.

    Returns:
        The projection's position when the wait ended (>= ``position``).

    Raises:
        WaitTimeout: the position was not reached in time; the message says where it is.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    deadline = time.monotonic() + timeout
    with connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TRACKING_CHANNEL)))
            while True:
                current = applied_up_to(conn, projection, log, position)
                if current >= position:
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = (
                        f"projection {projection!r} is at {log}:{current}, not at {position} "
                        f"after {timeout:.1f}s; is its worker running?"
                    )
                    raise WaitTimeout(msg)
                for _ in conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                    pass
        except psycopg.OperationalError as e:
            raise translate(e, f"waiting for {projection!r}") from e
