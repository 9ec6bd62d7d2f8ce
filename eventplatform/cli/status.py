"""Where everything is: log heads, relay positions and leaders, projection positions, lag."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from eventplatform.errors import SchemaError
from eventplatform.leases.leadership import projection_lease, relay_lease
from eventplatform.store.postgres import connect, translate
from eventplatform.store.schema import (
    LEASES,
    OVERSIZED_EVENTS,
    PROJECTION_VERSIONS,
    RELAY_POSITIONS,
    TRACKING,
    UNROUTED_EVENTS,
    events_table,
)


@dataclass(frozen=True, slots=True)
class LogStatus:
    """A log: its head, how far the relay got, who leads it and since when.

    Attributes:
        leader: the holder id (``host:pid:random``) of the live relay lease, None when no
            relay leads (none running, or the last one's lease expired).
        leader_since: when that relay took the lease (ISO 8601).
        lease_expires_at: when its lease runs out unless renewed.
        lease_token: the current fencing token (grows with every takeover).
        unrouted: events whose topic mapped to no subject (recorded, not published).
        oversized: events larger than the broker's max payload (recorded, not published).
    """

    log: str
    head: int
    relay_position: int
    relay_lag: int
    relay_updated_at: str | None
    leader: str | None = None
    leader_since: str | None = None
    lease_expires_at: str | None = None
    lease_token: int | None = None
    unrouted: int = 0
    oversized: int = 0


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """A projection's position in one log."""

    projection: str
    log: str
    position: int
    lag: int
    updated_at: str | None
    version: int | None = None  # serving version (issue 5), None when unrecorded
    leader: str | None = None  # the holder of the projection's live lease (issue 10)
    leader_since: str | None = None


@dataclass(frozen=True, slots=True)
class PlatformStatus:
    """Everything ``eventplatform status`` shows."""

    logs: list[LogStatus] = field(default_factory=list)
    projections: list[ProjectionStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def read_status(dsn: str, logs: list[str] | None = None) -> PlatformStatus:
    """Reads the status of ``logs`` and of every projection tracked in the database.

    Args:
        dsn: PostgreSQL connection string.
        logs: the logs to show; None: every log a relay or a projection has a position in.

    Raises:
        StoreUnavailable: PostgreSQL could not be reached.
    """
    status = PlatformStatus()
    heads: dict[str, int] = {}
    try:
        with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            for log in logs if logs is not None else _known_logs(cur):
                heads[log] = _head(cur, log)
                cur.execute(
                    sql.SQL("SELECT position, updated_at FROM {} WHERE log = %s").format(
                        sql.Identifier(RELAY_POSITIONS)
                    ),
                    (log,),
                )
                row = cur.fetchone()
                position = int(row[0]) if row else 0
                leader, since, expires, token = _leader(cur, log)
                status.logs.append(
                    LogStatus(
                        log=log,
                        head=heads[log],
                        relay_position=position,
                        relay_lag=max(0, heads[log] - position),
                        relay_updated_at=row[1].isoformat() if row else None,
                        leader=leader,
                        leader_since=since,
                        lease_expires_at=expires,
                        lease_token=token,
                        unrouted=_count(cur, UNROUTED_EVENTS, log),
                        oversized=_count(cur, OVERSIZED_EVENTS, log),
                    )
                )
            cur.execute(
                sql.SQL(
                    "SELECT t.projection, t.log, t.position, t.updated_at, v.version FROM {} t"
                    " LEFT JOIN {} v ON v.projection = t.projection ORDER BY 1, 2"
                ).format(sql.Identifier(TRACKING), sql.Identifier(PROJECTION_VERSIONS))
            )
            for projection, log, position, updated_at, version in cur.fetchall():
                head = heads.get(log)
                if head is None:
                    head = heads[log] = _head(cur, log)
                leader, since, _, _ = _holder(cur, projection_lease(projection))
                status.projections.append(
                    ProjectionStatus(
                        projection=projection,
                        log=log,
                        position=int(position),
                        lag=max(0, head - int(position)),
                        updated_at=updated_at.isoformat(),
                        version=version,
                        leader=leader,
                        leader_since=since,
                    )
                )
    except psycopg.OperationalError as e:
        raise translate(e, "reading the status") from e
    return status


def _head(cur: psycopg.Cursor[Any], log: str) -> int:
    try:
        cur.execute(
            sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
                sql.Identifier(events_table(log))
            )
        )
    except psycopg.errors.UndefinedTable as e:
        msg = f"log {log!r} has no table {events_table(log)!r}: run 'eventplatform schema' first"
        raise SchemaError(msg) from e
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _leader(
    cur: psycopg.Cursor[Any], log: str
) -> tuple[str | None, str | None, str | None, int | None]:
    return _holder(cur, relay_lease(log))


def _holder(
    cur: psycopg.Cursor[Any], lease: str
) -> tuple[str | None, str | None, str | None, int | None]:
    """(holder, since, expires, token) of a lease; holder and since None when it expired."""
    cur.execute(
        sql.SQL(
            "SELECT holder, acquired_at, expires_at, token, expires_at > now() FROM {}"
            " WHERE name = %s"
        ).format(sql.Identifier(LEASES)),
        (lease,),
    )
    row = cur.fetchone()
    if row is None:
        return None, None, None, None
    holder, since, expires, token, live = row
    if not live:
        return None, None, expires.isoformat(), int(token)
    return holder, since.isoformat(), expires.isoformat(), int(token)


def _count(cur: psycopg.Cursor[Any], table: str, log: str) -> int:
    """How many of ``log``'s events ``table`` records (unrouted, oversized)."""
    cur.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE log = %s").format(sql.Identifier(table)),
        (log,),
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _known_logs(cur: psycopg.Cursor[Any]) -> list[str]:
    """Every log a relay leads or has recorded a position in, or a projection tracks."""
    cur.execute(
        sql.SQL(
            "SELECT log FROM {} UNION SELECT log FROM {} UNION"
            " SELECT substr(name, length('relay:') + 1) FROM {} WHERE name LIKE 'relay:%%'"
            " ORDER BY 1"
        ).format(sql.Identifier(RELAY_POSITIONS), sql.Identifier(TRACKING), sql.Identifier(LEASES))
    )
    return [str(row[0]) for row in cur.fetchall()]
