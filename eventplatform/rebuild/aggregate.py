"""Rebuilding one aggregate's rows in place (``rebuild --aggregate ID``).

One transaction on the live table: lock it against writers (``SHARE ROW EXCLUSIVE``: readers
go on and see the rows before or after, the live worker's next write waits), fix the live
position P, delete the aggregate's rows (:meth:`Projection.delete_aggregate`, by
``aggregate_column``), replay that aggregate's stored events up to P (later ones reach the
live worker as usual, so nothing is applied twice), and compare the aggregate's rows before
and after. On a difference the transaction is rolled back unless accepted (or the version
changed); with ``verify_only`` it is always rolled back. The typical use: repair rows a bug
or a manual edit damaged, without rebuilding the whole table.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from eventplatform.consumers.projection import Projection
from eventplatform.consumers.tracking import PostgresTracking
from eventplatform.consumers.versions import PostgresProjectionVersions
from eventplatform.errors import ConfigurationError
from eventplatform.partitions import partition_label, partition_of
from eventplatform.rebuild.replay import PostgresLogReader, StoredEventDecoder, apply_rows
from eventplatform.rebuild.report import RebuildError, RebuildOptions, RebuildReport
from eventplatform.rebuild.verify import Comparison


class _Rollback(Exception):
    pass


def rebuild_aggregate(
    conn: psycopg.Connection[Any],
    projection: Projection,
    reader: PostgresLogReader,
    decoder: StoredEventDecoder,
    options: RebuildOptions,
) -> RebuildReport:
    """Rebuilds ``options.aggregate``'s rows of the live table in place (see the module).

    Raises:
        ConfigurationError: the projection declares no ``aggregate_column``.
        RebuildError: the live table could not be locked in time.
    """
    aggregate = options.aggregate
    assert aggregate is not None
    if not projection.aggregate_column:
        msg = (
            f"projection {projection.name!r} declares no aggregate_column: "
            "it cannot rebuild one aggregate's rows"
        )
        raise ConfigurationError(msg)
    report = RebuildReport(
        projection.name, projection.table, projection.table, version=projection.version
    )
    target_projection = projection.for_table(projection.table)
    live = sql.Identifier(projection.table)
    select_rows = sql.SQL("SELECT t::text FROM {} AS t WHERE {} = %s ORDER BY 1").format(
        live, sql.Identifier(projection.aggregate_column)
    )
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(options.lock_timeout * 1000)}ms")
                )
            )
            # Against writers only: the worker waits, readers see before or after.
            cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live))
            # A partitioned projection: the position of the aggregate's own partition.
            n = PostgresProjectionVersions().partitions(cur, projection.name)
            key = projection.name
            if n > 1:
                key = partition_label(key, partition_of(aggregate, n), n)
            position = PostgresTracking().get(cur, key, reader.log).position
            cur.execute(select_rows, (aggregate,))
            before = [str(r[0]) for r in cur.fetchall()]
            target_projection.delete_aggregate(cur, aggregate)
            rows = reader.read_aggregate(cur, aggregate, position)
            apply_rows(conn, cur, target_projection, decoder, rows)
            cur.execute(select_rows, (aggregate,))
            after = [str(r[0]) for r in cur.fetchall()]
            differing = [f"{r} (only live)" for r in before if r not in after] + [
                f"{r} (only rebuilt)" for r in after if r not in before
            ]
            serving = PostgresProjectionVersions().serving(cur, projection.name)
            report.position, report.events, report.serving_version = position, len(rows), serving
            report.comparison = Comparison(
                len(before),
                len(after),
                differing=differing[: options.differences],
                differing_count=len(differing),
            )
            report.expected_differences = bool(differing) and serving not in (
                None,
                projection.version,
            )
            keep = not options.verify_only and (
                not differing or options.accept or report.expected_differences
            )
            if not keep:
                raise _Rollback
            report.swapped = True
            report.notes.append(f"aggregate {aggregate}: {len(rows)} events replayed in place")
    except _Rollback:
        pass
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
        msg = f"could not lock {projection.table!r} within {options.lock_timeout}s ({e}): retry"
        raise RebuildError(msg) from e
    return report
