"""``write-concurrency``: single-event commands from 1, 4 and 12 writer threads at once.

Ours: the writer threads share one ``Products`` application (as the threads of one service
process do) and each runs ``create`` commands; the application group-commits whatever arrives
while a transaction is under way. The limit: as many threads, each with its own connection,
re-insert the very rows ours stored into a table of the same shape, one committed INSERT per
row. Both sides take turns per round, at every writer count, in the same run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import psycopg

from benchmarks import baselines
from benchmarks.harness import (
    LOG,
    Result,
    Scale,
    Stopwatch,
    fresh_database,
    settings_for,
    stored_rows,
    throughput,
)
from domain import CreateProduct, Products
from eventplatform.store.application import CommandResult
from eventplatform.store.recorder import GroupCommitRecorder
from eventplatform.store.schema import events_table

WRITERS = (1, 4, 12)


def _in_threads(writers: int, work: Callable[[int], None]) -> None:
    """Runs ``work(w)`` in ``writers`` threads started together; re-raises the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def run(w: int) -> None:
        try:
            start.wait()
            work(w)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _ours(app: Products, writers: int, per_writer: int, tag: str) -> list[CommandResult]:
    results: list[list[CommandResult]] = [[] for _ in range(writers)]

    def work(w: int) -> None:
        for i in range(per_writer):
            command = CreateProduct(name=f"c{tag}-{w}-{i}", sku=f"C{tag}-{w}-{i}", price=Decimal(1))
            results[w].append(app.create(command))

    _in_threads(writers, work)
    return [r for rs in results for r in rs]


def _raw(dsn: str, writers: int, rows: Sequence[tuple[Any, ...]]) -> None:
    conns = [psycopg.connect(dsn) for _ in range(writers)]
    try:
        _in_threads(writers, lambda w: baselines.raw_insert(conns[w], rows[w::writers], 1))
    finally:
        for conn in conns:
            conn.close()


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Measures 1, 4 and 12 concurrent writers, ours beside raw inserts, round by round."""
    with fresh_database(server_dsn, "write_concurrency") as dsn:
        app = Products(settings_for(dsn, nats_url, "write_concurrency"))
        recorder = app.recorder
        assert isinstance(recorder, GroupCommitRecorder)
        ours = {w: Stopwatch() for w in WRITERS}
        raw = {w: Stopwatch() for w in WRITERS}
        groups = dict.fromkeys(WRITERS, 0)
        try:
            with psycopg.connect(dsn) as conn:
                baselines.create_raw_table(conn, events_table(LOG))
                for r in range(scale.rounds):
                    for writers in WRITERS:
                        per_writer = max(scale.write_concurrent // scale.rounds // writers, 1)
                        before = recorder.committer.groups
                        with ours[writers].timing():
                            results = _ours(app, writers, per_writer, f"{r}-{writers}")
                        groups[writers] += recorder.committer.groups - before
                        ours[writers].count += len(results)
                        rows = stored_rows(conn, min(res.position for res in results) - 1)
                        with raw[writers].timing():
                            _raw(dsn, writers, rows)
                        raw[writers].count += len(rows)
        finally:
            app.close()
    figures = []
    for writers in WRITERS:
        result = throughput(
            "write-concurrency",
            f"{writers} writer{'s' if writers > 1 else ''}, 1 event/command",
            ours[writers].rate,
            "psycopg_insert_1row_per_writer",
            raw[writers].rate,
            at_least=0.5,
        )
        result.extra["writers"] = writers
        result.extra["commands_per_transaction"] = round(
            ours[writers].count / max(groups[writers], 1), 2
        )
        figures.append(result)
    return figures
