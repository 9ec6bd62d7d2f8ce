"""The measurement behind the write path's design (not a figure of ``python -m benchmarks``).

``python -m benchmarks.write_paths [--commands N] [--runs R]`` measures, in the same run and
against raw INSERT + commit per row from as many threads, single-event ``Products.create``
commands from 1, 4 and 12 threads through:

* ``before``: eventsourcing's own recorder with a pool pre-ping (the write path until issue 15);
* ``group``: the platform's write path, (a) group commit (``eventplatform/store/appender.py``);
* ``lockless``: a prototype of (b), commit-ordered reading: no table lock, a connection per
  thread, the same one-round-trip insert, a ``xid8`` column filled by ``pg_current_xact_id()``.

Then it times (b)'s reader (``(tx, id) > position`` below ``pg_snapshot_xmin``) against the id
reader on a 100k backlog, and shows what (b)'s reader sees while an unrelated session holds a
transaction open. ``benchmarks/README.md`` ("Writes") reports the results.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import ClientCursor, sql

from benchmarks import baselines
from benchmarks.__main__ import servers
from benchmarks.harness import LOG, fresh_database, settings_for, stored_rows
from domain import CreateProduct, Products
from eventplatform.store.schema import events_table

WRITERS = (1, 4, 12)
STATE = b'{"timestamp":"2026-01-01T00:00:00+00:00","name":"p","sku":"S","price":"1"}'


class Before(Products):
    """Products on eventsourcing's own recorder (pre-ping is switched on by the caller)."""

    name = "products"

    def construct_recorder(self) -> ApplicationRecorder:
        return Application.construct_recorder(self)


class LocklessRecorder(PostgresApplicationRecorder):
    """(b)'s writer: no table lock, one connection per thread, one round trip per command."""

    dsn = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()
        table = sql.Identifier(self.events_table_name)
        self._head = sql.SQL(
            "BEGIN; NOTIFY {t}; INSERT INTO {t}"
            " (originator_id, originator_version, topic, state) VALUES "
        ).format(t=table)
        self._tail = sql.SQL(" RETURNING notification_id; COMMIT")

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = psycopg.connect(self.dsn, autocommit=True)
        rows = sql.SQL(", ").join([sql.SQL("(%s, %s, %s, %s)")] * len(stored_events))
        params = [
            v
            for e in stored_events
            for v in (e.originator_id, e.originator_version, e.topic, e.state)
        ]
        with ClientCursor(conn) as cur:
            cur.execute(self._head + rows + self._tail, params)
            while cur.description is None and cur.nextset():
                pass
            return [int(r[0]) for r in cur.fetchall()]


class Lockless(Products):
    """Products on (b)'s writer."""

    name = "products"

    def construct_recorder(self) -> ApplicationRecorder:
        factory: Any = self.factory
        LocklessRecorder.dsn = self._dsn
        return LocklessRecorder(factory.datastore, events_table_name=f"{LOG}_events")


def _in_threads(writers: int, work: Callable[[int], None]) -> float:
    start = threading.Barrier(writers)

    def run(w: int) -> None:
        start.wait()
        work(w)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def _ours(app: Products, writers: int, per_writer: int, tag: str) -> tuple[float, int]:
    lowest: list[int] = []

    def work(w: int) -> None:
        for i in range(per_writer):
            sku = f"S{tag}-{w}-{i}"
            result = app.create(CreateProduct(name=sku, sku=sku, price=Decimal(1)))
            if i == 0:
                lowest.append(result.position)

    seconds = _in_threads(writers, work)
    return writers * per_writer / seconds, min(lowest)


def _raw(dsn: str, writers: int, rows: Sequence[tuple[Any, ...]]) -> float:
    conns = [psycopg.connect(dsn) for _ in range(writers)]
    try:
        seconds = _in_threads(
            writers, lambda w: baselines.raw_insert(conns[w], rows[w::writers], 1)
        )
    finally:
        for conn in conns:
            conn.close()
    return len(rows) / seconds


def measure_writes(dsn: str, nats_url: str, commands: int, runs: int) -> None:
    """Prints ours / raw per writer count for the three write paths, ``runs`` times."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id()"
            ).format(sql.Identifier(events_table(LOG)))
        )
        conn.commit()
        baselines.create_raw_table(conn, events_table(LOG))
    settings = settings_for(dsn, nats_url, "write_paths", pool_size=12)
    apps: dict[str, Products] = {
        "before": Before(settings, env={"POSTGRES_PRE_PING": "y"}),
        "group": Products(settings),
        "lockless": Lockless(settings),
    }
    try:
        with psycopg.connect(dsn) as conn:
            for run in range(runs):
                print(f"run {run + 1}: ours / raw INSERT + commit per row, same run")
                for writers in WRITERS:
                    cells = []
                    for label, app in apps.items():
                        per_writer = max(commands // writers, 1)
                        rate, lowest = _ours(app, writers, per_writer, f"{run}{writers}{label}")
                        raw = _raw(dsn, writers, stored_rows(conn, lowest - 1))
                        cells.append(f"{label} {rate:6,.0f}/s = {rate / raw:.2f}")
                    print(f"  {writers:2} writers: " + "   ".join(cells))
    finally:
        for app in apps.values():
            app.close()


def measure_reader(dsn: str) -> None:
    """Times (b)'s reader against the id reader; shows its horizon stall."""
    table = sql.Identifier(events_table(LOG))
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(table))
        conn.execute(sql.SQL("CREATE INDEX ON {} (tx, notification_id)").format(table))
        for _ in range(100):
            with (
                conn.cursor() as cur,
                cur.copy(
                    sql.SQL(
                        "COPY {} (originator_id, originator_version, topic, state) FROM STDIN"
                    ).format(table)
                ) as copy,
            ):
                for _ in range(1000):
                    copy.write_row((uuid.uuid4(), 1, "Product.Created", STATE))
            conn.commit()
        conn.execute(sql.SQL("ANALYZE {}").format(table))
        conn.commit()
    by_id = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
        " WHERE notification_id > %s ORDER BY notification_id LIMIT 1000"
    ).format(table)
    by_tx = sql.SQL(
        # tx comes back as text (psycopg has no xid8 loader); ORDER BY must name the column
        "SELECT tx, notification_id, originator_id, originator_version, topic, state"
        " FROM {} WHERE (tx, notification_id) > (%s::xid8, %s)"
        " AND tx < pg_snapshot_xmin(pg_current_snapshot())"
        " ORDER BY tx, notification_id LIMIT 1000"
    ).format(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        began, position, n = time.perf_counter(), 0, 0
        while rows := conn.execute(by_id, (position,), prepare=True).fetchall():
            position, n = rows[-1][0], n + len(rows)
        print(f"id reader:   {n / (time.perf_counter() - began):9,.0f} rows/s")
        began, cursor, n = time.perf_counter(), ("0", 0), 0
        while rows := conn.execute(by_tx, cursor, prepare=True).fetchall():
            cursor, n = (rows[-1][0], rows[-1][1]), n + len(rows)
        print(f"xid8 reader: {n / (time.perf_counter() - began):9,.0f} rows/s")
        with psycopg.connect(dsn) as other, psycopg.connect(dsn) as writer:
            other.execute("CREATE TEMP TABLE unrelated (x int)")  # takes an xid, stays open
            writer.execute(
                sql.SQL(
                    "INSERT INTO {} (originator_id, originator_version, topic, state)"
                    " VALUES (%s, 1, 'Product.Created', %s)"
                ).format(table),
                (uuid.uuid4(), STATE),
            )
            writer.commit()
            seen = len(conn.execute(by_tx, cursor).fetchall())
            print(f"a committed event, while another session has a transaction open: {seen} seen")
            other.rollback()
        seen = len(conn.execute(by_tx, cursor).fetchall())
        print(f"the same event once that transaction ended: {seen} seen")


def main() -> None:
    """Runs both measurements on throwaway (or the configured) servers."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_paths")
    parser.add_argument("--commands", type=int, default=900, help="commands per point")
    parser.add_argument("--runs", type=int, default=2, help="repetitions")
    args = parser.parse_args()
    with servers() as (server_dsn, nats_url), fresh_database(server_dsn, "write_paths") as dsn:
        measure_writes(dsn, nats_url, args.commands, args.runs)
        measure_reader(dsn)


if __name__ == "__main__":
    main()
