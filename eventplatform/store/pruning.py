"""Pruning what the platform only keeps for people to look at, once it is old enough.

Resolved dead letters (retried or discarded) and unrouted-event records grow without bound
otherwise. Open dead letters, parked events and handlers' processed-event markers are never
pruned: the first two are work still to do, the markers are what makes a handler idempotent.
Rows go in batches of their own short transactions, so a large backlog never holds a long lock
on a table the consumers write to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from psycopg import sql

from eventplatform.store.postgres import connect
from eventplatform.store.schema import DEAD_LETTERS, UNROUTED_EVENTS

#: Rows deleted per statement.
PRUNE_BATCH = 5000

_RULES = {
    "dead_letters": sql.SQL("status IN ('retried', 'discarded') AND resolved_at < now() - %(age)s"),
    "unrouted_events": sql.SQL("recorded_at < now() - %(age)s"),
}
_TABLES = {"dead_letters": DEAD_LETTERS, "unrouted_events": UNROUTED_EVENTS}


@dataclass(frozen=True, slots=True)
class PruneReport:
    """How many rows pruning removed (or, on a dry run, would remove).

    Attributes:
        dead_letters: resolved dead letters.
        unrouted_events: records of events that mapped to no subject.
    """

    dead_letters: int = 0
    unrouted_events: int = 0


def prune(
    dsn: str, *, older_than: timedelta, dry_run: bool = False, batch: int = PRUNE_BATCH
) -> PruneReport:
    """Deletes resolved dead letters and unrouted-event records older than ``older_than``.

    A dead letter's age counts from when it was resolved, an unrouted event's from when it was
    recorded.

    Args:
        dsn: PostgreSQL connection string.
        older_than: the age beyond which rows go.
        dry_run: count only, delete nothing.
        batch: rows per delete statement.

    Raises:
        ValueError: ``older_than`` is not positive.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    if older_than <= timedelta(0):
        msg = f"older_than must be positive, got {older_than}"
        raise ValueError(msg)
    counts: dict[str, int] = {}
    with connect(dsn, autocommit=True) as conn:
        for name, rule in _RULES.items():
            table = sql.Identifier(_TABLES[name])
            params = {"age": older_than, "batch": batch}
            if dry_run:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, rule), params
                ).fetchone()
                counts[name] = int(row[0]) if row else 0
                continue
            delete = sql.SQL(
                "DELETE FROM {table} WHERE ctid IN"
                " (SELECT ctid FROM {table} WHERE {rule} LIMIT %(batch)s)"
            ).format(table=table, rule=rule)
            total = 0
            while (deleted := conn.execute(delete, params).rowcount) > 0:
                total += deleted
            counts[name] = total
    return PruneReport(**counts)
