"""The W3C ``traceparent`` of each save, stored beside its events: the trace's way to the relay.

Where it is stored, and why there: a nullable column ``traceparent`` of the log's own table
(``<log>_events``), set in the transaction that inserts the events.

* Not in the event's state: the relay splices the stored state verbatim into the message and
  consumers compare it byte for byte with the store (invariant 8); a trace id is not the
  event's data, and two saves of equal events must store equal data.
* Not in a side table written after the commit: the relay, woken by the NOTIFY of that very
  commit, would often read the events before their trace context.
* In the same row, the relay reads it with the event at no extra cost (no join); a NULL costs
  nothing when tracing is off (and nothing is written then: no traceparent, no statement).

eventsourcing's recorder knows nothing of it: :class:`TraceContextRecorder` adds the column
when it creates the table, and after inserting a save's events (in the same transaction) sets
their ``traceparent`` when the save has one; the group commit's appender writes it with the
events (:class:`TracedEvent`). A table created before the column existed gets it
from ``eventplatform schema``; until then traceparents are simply not stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import sql

TRACEPARENT_COLUMN = "traceparent"
#: What eventsourcing's factory builds for an application (``APPLICATION_RECORDER_TOPIC``).
RECORDER_TOPIC = "eventplatform.store.trace_context:TraceContextRecorder"


def add_trace_column(cur: psycopg.Cursor[Any], table: sql.Composable) -> None:
    """Adds the ``traceparent`` column to an events table (idempotent, metadata only)."""
    cur.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
            table, sql.Identifier(TRACEPARENT_COLUMN)
        )
    )


def has_trace_column(conn: psycopg.Connection[Any], table: Sequence[str]) -> bool:
    """Whether an events table (``(schema, name)`` or ``(name,)``) has the column."""
    schema, name = (table[0], table[-1]) if len(table) > 1 else ("public", table[0])
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (schema, name, TRACEPARENT_COLUMN),
    ).fetchone()
    return row is not None


@dataclass(frozen=True, slots=True)
class TracedEvent:
    """A stored event with the ``traceparent`` of the save that stores it (what the group
    commit's appender writes into the column)."""

    originator_id: Any
    originator_version: int
    topic: str
    state: bytes
    traceparent: str | None


def traced(events: Sequence[StoredEvent], traceparent: str | None) -> Sequence[Any]:
    """The events of one save, carrying its ``traceparent`` (unchanged when there is none)."""
    if not traceparent:
        return events
    return [
        TracedEvent(e.originator_id, e.originator_version, e.topic, e.state, traceparent)
        for e in events
    ]


class TraceContextRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder, storing each save's ``traceparent``.

    ``Application.save(..., traceparent=...)`` passes it down to the recorder (eventsourcing
    forwards a save's keyword arguments to ``insert_events``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = sql.Identifier(self.datastore.schema, self.events_table_name)
        self._table = table
        self._set_traceparent = sql.SQL(
            "UPDATE {} SET {} = %s WHERE notification_id = ANY(%s)"
        ).format(table, sql.Identifier(TRACEPARENT_COLUMN))
        self._has_column: bool | None = None

    def create_table(self) -> None:
        """eventsourcing's table, with the ``traceparent`` column."""
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            add_trace_column(curs, self._table)
        self._has_column = True

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        traceparent = kwargs.get("traceparent")
        if traceparent and ids and self._column_exists(curs):
            curs.execute(self._set_traceparent, (traceparent, list(ids)))
        return ids

    def _column_exists(self, curs: Any) -> bool:
        if self._has_column is None:
            curs.execute(
                "SELECT 1 FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s AND column_name = %s",
                (self.datastore.schema, self.events_table_name, TRACEPARENT_COLUMN),
            )
            self._has_column = curs.fetchone() is not None
        return self._has_column
