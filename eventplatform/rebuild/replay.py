"""Replaying the event store into a projection: large batches, set-based, one txn per batch.

Rebuilds read the notification log itself (the eventsourcing recorder's ``<log>_events``
table), never the broker: the store keeps every event forever, a stream may not. Rows are
turned back into domain events by the store's own mapper (older tagged states converted,
upcasting included, validated against the class), exactly as when an aggregate is loaded;
topics the projection does not declare reach ``apply`` as the :class:`CloudEvent` envelopes
the relay would have published for them, as they do from the live worker. A batch is applied through
``apply_batch`` in pipeline mode and committed together with the replay's tracking position,
so an interrupted replay resumes after its last committed batch.

Ids are in commit order (the recorder locks the table on insert), so reading up to a
position a live worker has already applied never misses a late commit below it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from eventplatform.consumers.projection import Projection
from eventplatform.consumers.tracking import PostgresTracking
from eventplatform.errors import DecodeError, ProjectionError
from eventplatform.messagebus import cloudevents
from eventplatform.partitions import partition_sql
from eventplatform.store.mapper import PlainJSONMapper, wire_topic
from eventplatform.store.postgres import connect, translate
from eventplatform.store.schema import events_table


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of the notification log."""

    notification_id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


class StoredEventDecoder:
    """Turns stored rows into domain events of the declared classes (others: envelopes).

    Args:
        event_classes: the classes the projection declares (its ``event_classes``).
        log: the log name, the ``source`` of envelopes for undeclared topics.
    """

    def __init__(self, event_classes: Iterable[type[Any]], *, log: str) -> None:
        self._classes = {wire_topic(cls) for cls in event_classes}
        self._log = log
        self._mapper = PlainJSONMapper()

    @property
    def topics(self) -> frozenset[str]:
        """Topics decoded into domain events."""
        return frozenset(self._classes)

    def decode(self, row: StoredRow) -> Any:
        """Returns the domain event (declared topic) or a :class:`CloudEvent` envelope.

        Raises:
            DecodeError: the stored state does not fit its class; names the notification.
        """
        if row.topic not in self._classes:
            # The message the relay publishes for this row, as the live worker receives it.
            return cloudevents.decode(
                cloudevents.encode(
                    log=self._log,
                    notification_id=row.notification_id,
                    aggregate_id=row.originator_id,
                    version=row.originator_version,
                    topic=row.topic,
                    state=row.state,
                )
            )
        stored = StoredEvent(
            originator_id=row.originator_id,
            originator_version=row.originator_version,
            topic=row.topic,
            state=row.state,
        )
        try:
            return self._mapper.to_domain_event(stored)
        except DecodeError as e:
            msg = f"cannot decode {self._log}:{row.notification_id} ({row.topic}): {e}"
            raise DecodeError(msg) from e
        except Exception as e:  # a cipher, a compressor, a topic that no longer resolves
            msg = f"cannot decode {self._log}:{row.notification_id} ({row.topic}): {e!r}"
            raise DecodeError(msg) from e


class PostgresLogReader:
    """Reads a log's stored events in id order with the caller's cursor.

    Args:
        log: the log (application) name.
        topics: when given, only rows of these topics are read (the rest are skipped
            server-side; positions still advance past them).
        partition: ``(k, n)``: only rows of partition k of n are read (the events a
            partitioned projection's partition k applies).
    """

    def __init__(
        self,
        log: str,
        topics: Collection[str] | None = None,
        *,
        partition: tuple[int, int] | None = None,
    ) -> None:
        self.log = log
        self.partition = partition
        self._topics = list(topics) if topics is not None else None
        table = sql.Identifier(events_table(log))
        columns = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
        ).format(table)
        topic_filter: sql.Composable = (
            sql.SQL(" AND topic = ANY(%(topics)s)") if topics is not None else sql.SQL("")
        )
        if partition is not None:
            topic_filter = sql.SQL("{} AND {} = {}").format(
                topic_filter,
                partition_sql("originator_id", partition[1]),
                sql.Literal(partition[0]),
            )
        self._range = sql.SQL(
            "{} WHERE notification_id > %(after)s AND notification_id <= %(upto)s{}"
            " ORDER BY notification_id LIMIT %(limit)s"
        ).format(columns, topic_filter)
        self._aggregate = sql.SQL(
            "{} WHERE originator_id = %(aggregate)s AND notification_id <= %(upto)s{}"
            " ORDER BY notification_id"
        ).format(columns, topic_filter)
        self._head = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(table)

    def head(self, cur: psycopg.Cursor[Any]) -> int:
        """The highest notification id in the log (0 when empty)."""
        cur.execute(self._head)
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def read(self, cur: psycopg.Cursor[Any], after: int, upto: int, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows with ``after < id <= upto``, in id order."""
        cur.execute(
            self._range, {"after": after, "upto": upto, "limit": limit, "topics": self._topics}
        )
        return [_row(r) for r in cur.fetchall()]

    def read_aggregate(
        self, cur: psycopg.Cursor[Any], aggregate: UUID, upto: int
    ) -> list[StoredRow]:
        """Every row of one aggregate with ``id <= upto``, in id order."""
        cur.execute(self._aggregate, {"aggregate": aggregate, "upto": upto, "topics": self._topics})
        return [_row(r) for r in cur.fetchall()]


def _row(r: Sequence[Any]) -> StoredRow:
    return StoredRow(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4]))


def apply_rows(
    conn: psycopg.Connection[Any],
    cur: psycopg.Cursor[Any],
    projection: Projection,
    decoder: StoredEventDecoder,
    rows: Sequence[StoredRow],
) -> None:
    """Decodes ``rows`` and applies them with one pipelined ``apply_batch`` (caller's txn).

    Raises:
        DecodeError: a row cannot be decoded (nothing of the batch is applied).
        ProjectionError: the projection failed; names the batch's first and last id.
    """
    if not rows:
        return
    events = [decoder.decode(r) for r in rows]
    try:
        with conn.pipeline():
            projection.apply_batch(cur, events)
    except psycopg.OperationalError:
        raise
    except Exception as e:
        msg = (
            f"projection {projection.name!r} failed replaying "
            f"{rows[0].notification_id}..{rows[-1].notification_id}: {e!r}"
        )
        raise ProjectionError(msg) from e


def replay_batch(
    conn: psycopg.Connection[Any],
    reader: PostgresLogReader,
    projection: Projection,
    decoder: StoredEventDecoder,
    *,
    tracking_key: str,
    after: int,
    upto: int,
    limit: int,
) -> tuple[int, int]:
    """Replays one batch after ``after`` (up to ``upto``) and records the new position,
    all in one transaction.

    Returns:
        (new position, events applied); the position is ``upto`` once the range is drained.
    """
    tracking = PostgresTracking()
    with conn.transaction(), conn.cursor() as cur:
        rows = reader.read(cur, after, upto, limit)
        apply_rows(conn, cur, projection, decoder, rows)
        position = rows[-1].notification_id if len(rows) == limit else upto
        if position > after:
            tracking.record(cur, tracking_key, reader.log, position)
    return position, len(rows)


def replay_log(
    dsn: str,
    projection: Projection,
    *,
    log: str,
    tracking_key: str | None = None,
    upto: int | None = None,
    batch_size: int = 5000,
    topics: Collection[str] | None = None,
) -> tuple[int, int]:
    """Replays ``log`` into ``projection.table`` from where ``tracking_key`` stands.

    The bare replay a rebuild is made of, without shadow, verification or swap: for
    benchmarks, and for filling a new, not yet served table. One transaction per batch.

    Args:
        dsn: PostgreSQL connection string.
        projection: writes its ``table`` (create it first: ``create_tables``/``schema``).
        log: the log to replay.
        tracking_key: the position's name in the tracking table (default
            ``<projection name>#replay``); a second call resumes after it.
        upto: last position to replay (default: the log head when the call starts).
        batch_size: stored events per transaction.
        topics: read only these topics (default: all).

    Returns:
        (position reached, events applied).

    Raises:
        StoreUnavailable: PostgreSQL could not be reached.
        DecodeError, ProjectionError: an event could not be decoded or applied.
    """
    key = tracking_key or f"{projection.name}#replay"
    reader = PostgresLogReader(log, topics)
    decoder = StoredEventDecoder(projection.event_classes, log=log)
    applied = 0
    try:
        with connect(dsn) as conn:
            with conn.transaction(), conn.cursor() as cur:
                position = PostgresTracking().get(cur, key, log).position
                target = reader.head(cur) if upto is None else upto
            while position < target:
                position, n = replay_batch(
                    conn,
                    reader,
                    projection,
                    decoder,
                    tracking_key=key,
                    after=position,
                    upto=target,
                    limit=batch_size,
                )
                applied += n
    except psycopg.OperationalError as e:
        raise translate(e, f"replaying {log!r} into {projection.name!r}") from e
    return position, applied
