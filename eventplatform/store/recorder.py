"""eventsourcing's PostgreSQL application recorder, with inserts that go through a group commit.

Everything else of the recorder (reading events and notifications, creating its table) is
eventsourcing's own; only ``insert_events`` is replaced, so an application's ``save`` still
maps, records, snapshots and returns ``Recording`` objects exactly as eventsourcing does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore

from eventplatform.store.group_commit import GroupCommitter
from eventplatform.store.trace_context import TraceContextRecorder, traced


class GroupCommitRecorder(TraceContextRecorder):
    """A ``PostgresApplicationRecorder`` whose writes are coalesced across threads.

    Args:
        datastore: eventsourcing's datastore (its pool serves the reads).
        events_table_name: the log's table, ``<log>_events``.
        committer: writes each call's events in a group transaction and returns their ids.
    """

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str,
        committer: GroupCommitter[Sequence[StoredEvent], list[int]],
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.committer = committer

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int]:
        """Stores one save's events atomically; returns their notification ids, in order.

        ``kwargs`` (eventsourcing passes ``tracking`` for process applications) must carry no
        tracking record: an application recorder does not record one. A ``traceparent`` (see
        :mod:`eventplatform.store.trace_context`) is stored with the events.

        Raises:
            ConcurrencyConflict: one of the versions is already stored; nothing was written.
            StoreUnavailable: PostgreSQL stayed out of reach; nothing was written.
            CommitOutcomeUnknown: the connection broke during the commit and stayed broken.
        """
        if kwargs.get("tracking") is not None:
            msg = "GroupCommitRecorder is an application recorder: it records no tracking"
            raise TypeError(msg)
        if not stored_events:
            return []
        return self.committer.submit(traced(stored_events, kwargs.get("traceparent")))
