"""Group commit against a real PostgreSQL: concurrent commands share transactions, each keeps
its own outcome, and a reader that follows notification ids never passes one that commits
later (DESIGN invariant 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

import psycopg
import pytest

from domain import CreateProduct, Products
from eventplatform.errors import ConcurrencyConflict
from eventplatform.settings import Settings, load_settings
from eventplatform.store.application import CommandResult
from eventplatform.store.group_commit import GroupCommitter
from eventplatform.store.recorder import GroupCommitRecorder
from eventplatform.store.schema import create_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(database_dsn: str) -> Settings:
    create_schema(database_dsn, logs=["products"])
    return load_settings({}, dsn=database_dsn, log="products", pool_size=4)


@pytest.fixture
def app(settings: Settings) -> Iterator[Products]:
    app = Products(settings)
    yield app
    app.close()


def stored(dsn: str) -> list[tuple[int, UUID, int]]:
    """(notification id, aggregate, version) of every stored event, in id order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version FROM products_events"
            " ORDER BY notification_id"
        ).fetchall()
    return [(int(r[0]), r[1], int(r[2])) for r in rows]


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits for a state of another thread or session that no event announces."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def create(app: Products, name: str) -> CommandResult:
    return app.create(CreateProduct(name=name, sku=name, price=Decimal("1.50")))


def in_threads(
    calls: dict[str, Callable[[], Any]],
) -> tuple[list[threading.Thread], dict[str, Any]]:
    """Starts one thread per call; each call's result or exception lands in the dict."""
    outcomes: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            outcomes[name] = call()
        except Exception as e:
            outcomes[name] = e

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    return threads, outcomes


class TableLock:
    """Another session holding the events table's EXCLUSIVE lock, as a slow writer would:
    the next group blocks on it while the commands behind it queue up."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = psycopg.connect(dsn)
        self._conn.execute("LOCK TABLE products_events IN EXCLUSIVE MODE")

    def blocked_pids(self) -> list[int]:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchall()
        return [int(r[0]) for r in rows]

    def release(self) -> None:
        self._conn.rollback()
        self._conn.close()


def committer_of(app: Products) -> GroupCommitter[Any, Any]:
    recorder = app.recorder
    assert isinstance(recorder, GroupCommitRecorder)
    return recorder.committer


def in_one_group(app: Products, dsn: str, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Runs ``calls`` so that they go in one group transaction; returns their outcomes.

    Another session holds the table while one command blocks on it and ``calls`` queue behind
    it; released, the blocked command commits, then ``calls`` go together."""
    lock = TableLock(dsn)
    first, _ = in_threads({"first": partial(create, app, "first")})
    until(lambda: len(lock.blocked_pids()) == 1)
    threads, outcomes = in_threads(calls)
    until(lambda: committer_of(app).pending == len(calls))
    lock.release()
    for t in first + threads:
        t.join()
    return outcomes


def test_concurrent_commands_share_transactions_and_each_learns_its_own_position(app, settings):
    results: list[CommandResult] = []

    def writer(w: int) -> None:
        results.extend(create(app, f"w{w}-{i}") for i in range(20))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    rows = stored(settings.dsn)
    assert len(rows) == len(results) == 240
    position_of = {aggregate: nid for nid, aggregate, _ in rows}
    assert all(r.position == position_of[r.aggregate_id] for r in results)
    assert committer_of(app).groups < 240


def test_a_reader_tailing_the_log_while_processes_group_commit_never_skips_an_id(settings):
    # Six applications stand for six processes: each group-commits its two threads'
    # commands, and the groups of different applications race for the table.
    apps = [Products(settings) for _ in range(6)]
    writing = threading.Event()
    writing.set()
    seen: list[int] = []
    reads_with_news = 0

    def tail() -> None:
        nonlocal reads_with_news
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            position = 0
            while True:
                still_writing = writing.is_set()
                ids = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT notification_id FROM products_events"
                        " WHERE notification_id > %s ORDER BY notification_id",
                        (position,),
                    ).fetchall()
                ]
                if ids:
                    reads_with_news += 1
                    seen.extend(ids)
                    position = ids[-1]
                elif not still_writing:
                    return

    def writer(app: Products, w: int) -> None:
        for i in range(60):
            created = create(app, f"w{w}-{i}")
            product = app.get(created.aggregate_id)
            product.rename(f"renamed {w}-{i}")
            app.execute(product)

    reader = threading.Thread(target=tail)
    reader.start()
    writers = [
        threading.Thread(target=writer, args=(app, a * 2 + w))
        for a, app in enumerate(apps)
        for w in range(2)
    ]
    try:
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    finally:
        writing.clear()
        reader.join()
        for app in apps:
            app.close()

    ids = [nid for nid, _, _ in stored(settings.dsn)]
    assert len(ids) == 6 * 2 * 60 * 2
    assert reads_with_news > 10, "the reader did not tail the writes"
    assert seen == ids, "the reader passed ids that committed after it read past them"


def test_a_command_whose_version_is_taken_fails_alone_and_the_rest_of_its_group_commits(
    app, settings
):
    product = create(app, "contested")
    stale = app.get(product.aggregate_id)
    stale.rename("too late")
    other = Products(settings)
    try:
        winner = other.get(product.aggregate_id)
        winner.rename("first")
        other.execute(winner)  # version 2 is now stored
    finally:
        other.close()

    calls: dict[str, Callable[[], Any]] = {
        f"new{i}": partial(create, app, f"new{i}") for i in range(5)
    }
    calls["stale"] = partial(app.execute, stale)
    outcomes = in_one_group(app, settings.dsn, calls)

    assert isinstance(outcomes.pop("stale"), ConcurrencyConflict)
    rows = stored(settings.dsn)
    assert all(isinstance(r, CommandResult) for r in outcomes.values())
    assert {r.position for r in outcomes.values()} <= {nid for nid, _, _ in rows}
    versions = [v for _, aggregate, v in rows if aggregate == product.aggregate_id]
    assert versions == [1, 2]
    assert app.get(product.aggregate_id).name == "first"


def test_two_commands_on_the_same_version_in_one_group_one_wins_and_the_other_conflicts(
    app, settings
):
    product = create(app, "twice")
    a, b = app.get(product.aggregate_id), app.get(product.aggregate_id)
    a.rename("by a")
    b.rename("by b")

    calls: dict[str, Callable[[], Any]] = {
        "a": partial(app.execute, a),
        "b": partial(app.execute, b),
    }
    calls.update({f"new{i}": partial(create, app, f"new{i}") for i in range(3)})
    outcomes = in_one_group(app, settings.dsn, calls)

    renames = [outcomes.pop("a"), outcomes.pop("b")]
    assert sum(isinstance(r, CommandResult) for r in renames) == 1
    assert sum(isinstance(r, ConcurrencyConflict) for r in renames) == 1
    assert all(isinstance(r, CommandResult) for r in outcomes.values())
    versions = [v for _, aggregate, v in stored(settings.dsn) if aggregate == product.aggregate_id]
    assert versions == [1, 2]


def test_a_group_whose_connection_is_killed_writes_nothing_of_it_and_every_caller_gets_one_outcome(
    app, settings
):
    lock = TableLock(settings.dsn)
    threads, outcomes = in_threads({f"c{i}": partial(create, app, f"c{i}") for i in range(6)})
    until(lambda: len(lock.blocked_pids()) == 1)  # one group is in its transaction
    until(lambda: committer_of(app).pending == 5)  # the others wait for the next
    (victim,) = lock.blocked_pids()
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", (victim,))
    lock.release()
    for t in threads:
        t.join()

    rows = stored(settings.dsn)
    results = [o for o in outcomes.values() if isinstance(o, CommandResult)]
    assert len(outcomes) == 6
    assert len(results) == 6, outcomes  # the killed group was sent again on a new connection
    assert sorted(r.position for r in results) == [nid for nid, _, _ in rows]
    assert len({aggregate for _, aggregate, _ in rows}) == 6  # each stored exactly once
