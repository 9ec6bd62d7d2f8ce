"""Rebuilding a projection from the event store while the live read model keeps serving.

Blue/green, in four steps (``rebuild``):

1. **Shadow.** A copy of the projection (``Projection.for_table``, ``replaying`` set) writes
   ``<table>__rebuild``; its position is tracked as ``<name>#rebuild`` in the ordinary tracking
   table, so an interrupted rebuild (Ctrl-C, crash, kill) resumes after its last committed
   batch. ``restart`` (and ``from_position``) drop the shadow and begin again.
2. **Catch up.** The shadow replays the notification log in large batches, one transaction
   per batch (:mod:`eventplatform.rebuild.replay`), up to the *live* projection's tracked position,
   not the log head: the shadow must never get ahead of the table it is compared with and
   takes over from. While the live worker keeps moving, catch-up repeats until the gap is
   below ``handover_gap``.
3. **Handover, in ONE transaction.** ``LOCK TABLE live IN SHARE MODE`` (readers go on
   reading; the live worker's next write waits), then the live tracking row ``FOR UPDATE``
   (its position P is now fixed: the same lock order as the worker, table before tracking,
   so no deadlock), then the last events up to P into the shadow, then the comparison
   (:mod:`eventplatform.rebuild.verify`) of two tables at the same position P.
4. **Swap**, still in that transaction, when they are equal, or when told to ``accept``, or
   when the projection's ``version`` differs from the serving one (the differences are then
   the expected effect of the new code and are reported as such): ``ACCESS EXCLUSIVE`` for
   the renames only, ``live → <table>__old`` (the previous ``__old`` is dropped), ``shadow →
   live``, index names follow, the shadow's tracking row goes, the serving version is
   recorded. The live tracking position stays P, which is exactly what the new table holds:
   the worker, blocked on the table lock, continues at P+1 into the new table (PostgreSQL
   re-resolves the table name after the lock wait and re-plans prepared statements), so
   nothing is skipped or applied twice. Readers see the old table or the new one, never an
   empty or half-built one. On a mismatch nothing is swapped; the caught-up shadow is kept.

Partial rebuilds:

- ``aggregate``: one aggregate's rows, in place, in one transaction on the live table: lock it
  against writers (``SHARE ROW EXCLUSIVE``), fix the live position P, delete the aggregate's
  rows (``Projection.delete_aggregate``: by ``aggregate_column``), replay that aggregate's
  events up to P, compare its rows before and after; roll back on a difference unless
  accepted (or the version changed), and always with ``verify_only``.
- ``from_position``: the shadow starts empty at that position and replays only later events
  (for read models that only cover recent history); verify then shows what is missing, and
  the swap needs ``accept``.

Side effects stay off: a rebuild drives projections only, never idempotent handlers, and the
projection it drives has ``replaying`` set.

Known limits: one table per projection (``Projection.table``) is swapped; a projection that
spreads its read model over several tables must keep the others derived from it (rebuilt via
``replay_log`` or a projection per table); only rows and indexes move with the rename (views on
the live table follow it to ``__old``: recreate them); events the live worker parked or
dead-lettered show up as differences (the rebuild applies them); a table without a primary key
is compared as a multiset of rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from eventplatform.consumers.projection import Projection
from eventplatform.consumers.tracking import PostgresTracking
from eventplatform.consumers.versions import PostgresProjectionVersions
from eventplatform.partitions import partition_label
from eventplatform.rebuild.aggregate import rebuild_aggregate
from eventplatform.rebuild.progress import NoProgress, Progress
from eventplatform.rebuild.replay import (
    PostgresLogReader,
    StoredEventDecoder,
    apply_rows,
    replay_batch,
)
from eventplatform.rebuild.report import (
    RebuildError,
    RebuildInterrupted,
    RebuildOptions,
    RebuildReport,
    StopSignal,
)
from eventplatform.rebuild.verify import compare_tables
from eventplatform.store.postgres import connect, translate
from eventplatform.store.schema import TRACKING

SHADOW_SUFFIX = "__rebuild"
OLD_SUFFIX = "__old"
TRACKING_SUFFIX = "#rebuild"


def shadow_table(projection: Projection) -> str:
    """Where a rebuild of ``projection`` writes until the swap."""
    return projection.table + SHADOW_SUFFIX


def rebuild(
    dsn: str,
    projection: Projection,
    options: RebuildOptions,
    *,
    progress: Progress | None = None,
    stop: StopSignal | None = None,
    decoder: StoredEventDecoder | None = None,
) -> RebuildReport:
    """Rebuilds ``projection`` from the event store and swaps it in when it checks out.

    Args:
        dsn: PostgreSQL connection string (event store and read model).
        projection: the projection as deployed (its ``table`` is the live table).
        options: what to rebuild and how (default: everything, verify, swap if equal).
        progress: receives progress after each batch.
        stop: asked between batches; when set, :class:`RebuildInterrupted` is raised.
        decoder: stored rows → events (default: the projection's ``event_classes``).

    Returns:
        The report: compare ``report.ok`` and ``report.swapped``.

    Raises:
        RebuildInterrupted: stopped; live untouched, the shadow resumes on the next run.
        RebuildError: the live table is missing, the shadow is ahead of live, or the live
            table could not be locked in time; live untouched.
        ProjectionError, DecodeError: replaying an event failed (its position is named).
        StoreUnavailable: PostgreSQL could not be reached.
    """
    progress = progress or NoProgress()
    decoder = decoder or StoredEventDecoder(projection.event_classes, log=options.log)
    reader = PostgresLogReader(options.log, options.topics)
    try:
        with connect(dsn) as conn:
            _require_table(conn, projection.table)
            if options.aggregate is not None:
                return rebuild_aggregate(conn, projection, reader, decoder, options)
            with _exclusive(conn, projection):
                return _Rebuild(conn, projection, reader, decoder, options, progress, stop).run()
    except psycopg.OperationalError as e:
        raise translate(e, f"rebuilding {projection.name!r}") from e
    finally:
        progress.close()


@contextmanager
def _exclusive(conn: psycopg.Connection[Any], projection: Projection) -> Iterator[None]:
    """One rebuild per projection at a time (a session lock, gone with a dead session)."""
    key = f"eventplatform.rebuild:{projection.name}"
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
        row = cur.fetchone()
    if not (row and row[0]):
        msg = f"another rebuild of {projection.name!r} is running; wait for it to finish"
        raise RebuildError(msg)
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _require_table(conn: psycopg.Connection[Any], table: str) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (sql.Identifier(table).as_string(cur),))
        row = cur.fetchone()
    if row is None or row[0] is None:
        msg = f"live table {table!r} does not exist: run 'eventplatform schema' first"
        raise RebuildError(msg)


@dataclass(frozen=True, slots=True)
class _Lane:
    """One position the shadow catches up to: the projection's, or one partition's.

    Attributes:
        live: the live tracking key (``name``, or ``name#k/n``).
        shadow: the shadow's tracking key.
        reader: reads the events of this lane (its partition's only, when partitioned).
    """

    live: str
    shadow: str
    reader: PostgresLogReader


class _Rebuild:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        projection: Projection,
        reader: PostgresLogReader,
        decoder: StoredEventDecoder,
        options: RebuildOptions,
        progress: Progress,
        stop: StopSignal | None,
    ) -> None:
        self.conn = conn
        self.projection = projection
        self.reader = reader
        self.decoder = decoder
        self.options = options
        self.progress = progress
        self.stop = stop
        self.live = projection.table
        self.shadow = projection.for_table(shadow_table(projection))
        self.key = projection.name + TRACKING_SUFFIX
        self.tracking = PostgresTracking()
        self.report = RebuildReport(
            projection.name, self.live, self.shadow.table, version=projection.version
        )
        self.lanes = self._lanes()

    def _lanes(self) -> list[_Lane]:
        """One lane, or one per partition: a partitioned projection has a position per
        partition, and the shadow must stand exactly where each partition stands."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            n = PostgresProjectionVersions().partitions(cur, self.projection.name)
        if n == 1:
            return [_Lane(self.projection.name, self.key, self.reader)]
        return [
            _Lane(
                partition_label(self.projection.name, k, n),
                partition_label(self.key, k, n),
                PostgresLogReader(self.reader.log, self.options.topics, partition=(k, n)),
            )
            for k in range(n)
        ]

    def run(self) -> RebuildReport:
        positions = self._prepare_shadow()
        start = sum(positions.values())
        for _ in range(self.options.max_rounds):
            targets = self._live_positions()
            for lane in self.lanes:
                if positions[lane.shadow] > targets[lane.live]:
                    msg = (
                        f"the shadow {self.shadow.table!r} is at {positions[lane.shadow]}, ahead"
                        f" of the live projection at {targets[lane.live]} (was live reset?):"
                        " rerun with --restart"
                    )
                    raise RebuildError(msg)
            for lane in self.lanes:
                target = targets[lane.live]
                while positions[lane.shadow] < target:
                    if self.stop is not None and self.stop.is_set():
                        msg = (
                            f"rebuild of {self.projection.name!r} stopped at"
                            f" {positions[lane.shadow]}; the live read model is untouched,"
                            " run it again to resume"
                        )
                        raise RebuildInterrupted(msg)
                    positions[lane.shadow], applied = replay_batch(
                        self.conn,
                        lane.reader,
                        self.shadow,
                        self.decoder,
                        tracking_key=lane.shadow,
                        after=positions[lane.shadow],
                        upto=target,
                        limit=self.options.batch_size,
                    )
                    self.report.events += applied
                    self.progress.update(
                        phase="replay",
                        position=sum(positions.values()),
                        start=start,
                        target=sum(targets.values()),
                        events=self.report.events,
                    )
            latest = self._live_positions()
            behind = sum(latest[lane.live] - positions[lane.shadow] for lane in self.lanes)
            if behind <= self.options.handover_gap:
                break
        self._handover(positions)
        return self.report

    def _prepare_shadow(self) -> dict[str, int]:
        log = self.reader.log
        fresh = self.options.restart or self.options.from_position is not None
        keys = [lane.shadow for lane in self.lanes]
        with self.conn.transaction(), self.conn.cursor() as cur:
            if fresh:
                cur.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.shadow.table))
                )
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE projection = ANY(%s)").format(
                        sql.Identifier(TRACKING)
                    ),
                    (keys,),
                )
            self.shadow.create_tables(cur)
            start = self.options.from_position or 0
            if fresh and start:
                for key in keys:
                    self.tracking.record(cur, key, log, start)
            positions = {key: self.tracking.get(cur, key, log).position for key in keys}
        if any(positions.values()):
            self.report.notes.append(
                f"resumed the shadow at position {max(positions.values())}"
                " (use --restart if the projection's code changed since it was built)"
            )
        return positions

    def _live_positions(self) -> dict[str, int]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            return {
                lane.live: self.tracking.get(cur, lane.live, self.reader.log).position
                for lane in self.lanes
            }

    def _handover(self, positions: dict[str, int]) -> None:
        """Catches up under lock, compares and, if it checks out, swaps; one transaction."""
        versions = PostgresProjectionVersions()
        live = sql.Identifier(self.live)
        shadow = self.shadow.table
        log = self.reader.log
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{int(self.options.lock_timeout * 1000)}ms")
                    )
                )
                # Readers go on; the live workers' next writes wait for this transaction.
                cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(live))
                cur.execute(
                    sql.SQL(
                        "SELECT projection, position FROM {} WHERE log = %s"
                        " AND projection = ANY(%s) ORDER BY projection FOR UPDATE"
                    ).format(sql.Identifier(TRACKING)),
                    (log, [lane.live for lane in self.lanes]),
                )
                targets = {str(k): int(v) for k, v in cur.fetchall()}
                for lane in self.lanes:
                    position, target = positions[lane.shadow], targets.get(lane.live, 0)
                    if position > target:
                        msg = f"the shadow is at {position}, ahead of live at {target}: --restart"
                        raise RebuildError(msg)
                    while position < target:
                        limit = self.options.batch_size
                        rows = lane.reader.read(cur, position, target, limit)
                        apply_rows(self.conn, cur, self.shadow, self.decoder, rows)
                        self.report.events += len(rows)
                        position = rows[-1].notification_id if len(rows) == limit else target
                    self.tracking.record(cur, lane.shadow, log, position)
                self.report.position = max(targets.values(), default=0)
                if len(self.lanes) > 1:
                    self.report.notes.append(
                        f"compared at each partition's position ({len(self.lanes)} partitions)"
                    )
                comparison = compare_tables(
                    cur, self.projection, self.live, shadow, limit=self.options.differences
                )
                self.report.comparison = comparison
                serving = versions.serving(cur, self.projection.name)
                self.report.serving_version = serving
                self.report.expected_differences = (
                    not comparison.equal
                    and serving is not None
                    and serving != self.projection.version
                )
                if self.options.verify_only:
                    return
                if not (
                    comparison.equal or self.options.accept or self.report.expected_differences
                ):
                    return
                self._swap(cur)
                versions.record(cur, self.projection.name, self.projection.version)
                self.report.swapped = True
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
            msg = (
                f"could not lock {self.live!r} within {self.options.lock_timeout}s for the "
                f"handover ({e}); the live read model is untouched, the shadow is kept: retry"
            )
            raise RebuildError(msg) from e

    def _swap(self, cur: psycopg.Cursor[Any]) -> None:
        old = self.live + OLD_SUFFIX
        cur.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(self.live))
        )
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(old)))
        _rename(cur, self.live, old)
        _rename(cur, self.shadow.table, self.live)
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE projection = ANY(%s)").format(sql.Identifier(TRACKING)),
            ([lane.shadow for lane in self.lanes],),
        )


def _rename(cur: psycopg.Cursor[Any], table: str, to: str) -> None:
    """Renames a table and the indexes named after it (so the names can be used again)."""
    cur.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s)",
        (sql.Identifier(table).as_string(cur),),
    )
    indexes = [str(r[0]) for r in cur.fetchall()]
    cur.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), sql.Identifier(to))
    )
    for index in indexes:
        if index.startswith(table):
            cur.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(index), sql.Identifier(to + index[len(table) :])
                )
            )
