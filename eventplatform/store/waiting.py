"""Read-your-writes: wait until a projection has applied a given position, without sleeping."""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from eventplatform.errors import WaitTimeout
from eventplatform.store.postgres import connect, translate
from eventplatform.store.schema import TRACKING, TRACKING_CHANNEL

_POSITION = sql.SQL("SELECT position FROM {} WHERE projection = %s AND log = %s").format(
    sql.Identifier(TRACKING)
)


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
                row = conn.execute(_POSITION, (projection, log)).fetchone()
                current = int(row[0]) if row else 0
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
