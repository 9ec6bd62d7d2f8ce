"""Pruning removes only what people no longer need: old resolved dead letters, old unrouted
records. Open dead letters, parked events and processed-event markers are never touched."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from eventplatform.cli.main import main
from eventplatform.store.pruning import prune
from eventplatform.store.schema import (
    DEAD_LETTERS,
    PARKED_EVENTS,
    PROCESSED_EVENTS,
    UNROUTED_EVENTS,
    create_schema,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(database_dsn: str) -> str:
    create_schema(database_dsn)
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        for status, age_days, consumer in [
            ("retried", 40, "old-retried"),
            ("discarded", 40, "old-discarded"),
            ("retried", 5, "recent-retried"),
            ("open", 400, "old-but-open"),
        ]:
            resolved = None if status == "open" else f"{age_days} days"
            conn.execute(
                q(
                    "INSERT INTO {} (consumer, error, body, status, created_at, resolved_at)"
                    " VALUES (%s, 'e', '\\x00', %s, now() - %s::interval, now() - %s::interval)",
                    DEAD_LETTERS,
                ),
                (consumer, status, f"{age_days + 1} days", resolved),
            )
        for n, age in [(1, "40 days"), (2, "1 day")]:
            conn.execute(
                q(
                    "INSERT INTO {} (log, notification_id, topic, recorded_at)"
                    " VALUES ('products', %s, 'X.Y', now() - %s::interval)",
                    UNROUTED_EVENTS,
                ),
                (n, age),
            )
        conn.execute(
            q(
                "INSERT INTO {} (consumer, aggregate, log, sequence, body, created_at)"
                " VALUES ('c', 'a', 'products', 1, '\\x00', now() - '400 days'::interval)",
                PARKED_EVENTS,
            )
        )
        conn.execute(
            q(
                "INSERT INTO {} (handler, event_id, processed_at)"
                " VALUES ('h', 'e1', now() - '400 days'::interval)",
                PROCESSED_EVENTS,
            )
        )
    return database_dsn


def q(statement: str, table: str) -> sql.Composed:
    return sql.SQL(statement).format(sql.Identifier(table))


def remaining(dsn: str, statement: str, table: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(q(statement, table)).fetchall()


def test_only_old_resolved_dead_letters_and_old_unrouted_records_go(dsn):
    report = prune(dsn, older_than=timedelta(days=30), batch=1)  # batch 1: the loop is walked
    assert (report.dead_letters, report.unrouted_events) == (2, 1)
    consumers = remaining(dsn, "SELECT consumer FROM {} ORDER BY consumer", DEAD_LETTERS)
    assert consumers == [("old-but-open",), ("recent-retried",)]
    assert remaining(dsn, "SELECT notification_id FROM {}", UNROUTED_EVENTS) == [(2,)]
    assert remaining(dsn, "SELECT count(*) FROM {}", PARKED_EVENTS) == [(1,)]
    assert remaining(dsn, "SELECT count(*) FROM {}", PROCESSED_EVENTS) == [(1,)]


def test_a_dry_run_counts_and_deletes_nothing(dsn):
    report = prune(dsn, older_than=timedelta(days=30), dry_run=True)
    assert (report.dead_letters, report.unrouted_events) == (2, 1)
    assert remaining(dsn, "SELECT count(*) FROM {}", DEAD_LETTERS) == [(4,)]


def test_the_command_prunes_and_says_what_went(dsn, monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", dsn)
    assert main(["prune", "--older-than", "30d"]) == 0
    assert "deleted 2 resolved dead letter(s) and 1 unrouted-event record(s)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("age", ["0d", "-5d", "30", "30x", "99999999999d", ""])
def test_an_age_that_is_not_positive_and_unit_bearing_is_refused_before_anything_goes(
    dsn, monkeypatch, capsys, age
):
    monkeypatch.setenv("APP_DSN", dsn)
    assert main(["prune", "--older-than", age]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert remaining(dsn, "SELECT count(*) FROM {}", DEAD_LETTERS) == [(4,)]
