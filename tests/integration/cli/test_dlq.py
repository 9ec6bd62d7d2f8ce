"""``eventplatform dlq``: list, show, retry (twice is harmless) and discard, on real servers."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import ConnectionPool

from eventplatform.cli.main import main
from eventplatform.consumers.dead_letters import PostgresDeadLetters
from eventplatform.consumers.retry import RetryPolicy
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.store.schema import create_schema
from tests.support.consumers import (
    OrderedProjection,
    agg,
    applied,
    event_body,
    publish,
    rows,
    stream_for,
)

pytestmark = [pytest.mark.integration]

FIXED = "tests.support.consumers:OrderedProjection"


@pytest_asyncio.fixture
async def letters(database_dsn, nats_url, unique_name, monkeypatch):
    """A2 failed (A3 parked behind it) and one poison message: two open dead letters."""
    projection = OrderedProjection(broken={("A", 2)})
    create_schema(database_dsn, projections=[projection])
    bodies = [event_body("A", 1, 1), event_body("A", 2, 2), b"poison", event_body("A", 3, 3)]
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish(broker, prefix, bodies)
        with ConnectionPool(database_dsn, min_size=1, max_size=2) as pool:
            worker = ProjectionWorker(
                projection=projection,
                broker=broker,
                pool=pool,
                config=WorkerConfig(
                    # hand-made events, no event store: trust the broker
                    verification="broker",
                    stream=prefix.upper(),
                    filter_subject=f"{prefix}.>",
                    fetch_timeout=0.3,
                    policy=RetryPolicy(attempts=1),
                ),
            )
            await worker.start()
            async with asyncio.timeout(20):
                while worker.positions.get("products", 0) < 3:
                    await worker.process_once()
    monkeypatch.setenv("APP_DSN", database_dsn)
    monkeypatch.setenv("APP_EVENT_VERIFICATION", "broker")  # hand-made events, no store
    ids = [
        r[0] for r in rows(database_dsn, "SELECT id FROM eventplatform_dead_letters ORDER BY id")
    ]
    return database_dsn, ids


def dlq(capsys, *args: str) -> tuple[int, str]:
    code = main(["dlq", *args])
    return code, capsys.readouterr().out


@pytest.mark.asyncio
async def test_list_shows_open_dead_letters_with_their_errors(letters, capsys):
    _, (parked_id, poison_id) = letters
    code, out = dlq(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3  # header + two
    assert str(parked_id) in lines[1]
    assert "cannot apply A v2" in lines[1]
    assert "(parked)" in lines[1]
    assert str(poison_id) in lines[2]
    assert "not JSON" in lines[2]


@pytest.mark.asyncio
async def test_show_prints_the_error_the_body_and_what_is_parked_behind(letters, capsys):
    _, (parked_id, _) = letters
    code, out = dlq(capsys, "show", str(parked_id))
    assert code == 0
    assert "cannot apply A v2" in out
    assert "parked_behind:  1" in out
    assert '"aggregateversion":2' in out


@pytest.mark.asyncio
async def test_retry_of_a_fixed_message_applies_it_once_and_twice_changes_nothing(letters, capsys):
    dsn, (parked_id, _) = letters
    first = dlq(capsys, "retry", str(parked_id), "--consumer", FIXED)
    second = dlq(capsys, "retry", str(parked_id), "--consumer", FIXED)

    assert first == (0, f"dead letter {parked_id}: applied (2 event(s)) by ordered\n")
    assert second[0] == 0
    assert "not open" in second[1]
    assert applied(dsn) == [("A", 1), ("A", 2), ("A", 3)]


@pytest.mark.asyncio
async def test_retry_all_reports_what_still_fails_and_exits_non_zero(letters, capsys):
    dsn, (parked_id, poison_id) = letters
    code, out = dlq(capsys, "retry", "--all", "--consumer", FIXED)
    assert code == 1
    assert f"dead letter {parked_id}: applied" in out
    assert f"dead letter {poison_id}: still fails" in out
    assert "not JSON" in out
    assert rows(dsn, "SELECT status FROM eventplatform_dead_letters ORDER BY id") == [
        ("retried",),
        ("open",),
    ]


@pytest.mark.asyncio
async def test_discard_refuses_to_strand_parked_events_unless_forced(letters, capsys):
    dsn, (parked_id, poison_id) = letters
    refused = dlq(capsys, "discard", str(parked_id))
    poison = dlq(capsys, "discard", str(poison_id))
    forced = dlq(capsys, "discard", str(parked_id), "--force")

    assert refused[0] == 1
    assert "1 parked event(s)" in refused[1]
    assert poison == (0, f"dead letter {poison_id}: discarded\n")
    assert forced == (0, f"dead letter {parked_id}: discarded, dropped 1 parked event(s)\n")
    assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(0,)]


@pytest.mark.asyncio
async def test_unknown_ids_and_wrong_consumers_are_clear_errors(letters, capsys):
    _, (parked_id, _) = letters
    assert main(["dlq", "show", "999999"]) == 1
    assert "no dead letter with id 999999" in capsys.readouterr().err
    assert main(["dlq", "retry", str(parked_id), "--consumer", "eventplatform:Projection"]) == 2
    assert "cannot instantiate projection" in capsys.readouterr().err


def test_retry_of_a_handler_dead_letter_twice_has_one_effect(database_dsn, monkeypatch, capsys):
    create_schema(database_dsn)
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE effects (handler text, event_id text, aggregate text)")
        with conn.cursor() as cur:
            letter_id = PostgresDeadLetters().record(
                cur, consumer="cli-handler", body=event_body("H", 1, 1), error="was broken"
            )
    monkeypatch.setenv("APP_DSN", database_dsn)
    monkeypatch.setenv("APP_EVENT_VERIFICATION", "broker")  # hand-made events, no store
    handler = "tests.support.consumers:EFFECT_HANDLER"

    first = dlq(capsys, "retry", str(letter_id), "--consumer", handler)
    second = dlq(capsys, "retry", str(letter_id), "--consumer", handler)

    assert first == (0, f"dead letter {letter_id}: applied (1 event(s)) by cli-handler\n")
    assert "not open" in second[1]
    assert rows(database_dsn, "SELECT aggregate FROM effects") == [(agg("H"),)]


def test_retry_all_reads_open_dead_letters_page_by_page_and_meets_each_once(
    database_dsn, monkeypatch, capsys
):
    create_schema(database_dsn)
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE effects (handler text, event_id text, aggregate text)")
        with conn.cursor() as cur:
            good = [
                PostgresDeadLetters().record(
                    cur, consumer="cli-handler", body=event_body(f"P{n}", 1, n), error="was broken"
                )
                for n in range(1, 6)
            ]
            poison = [
                PostgresDeadLetters().record(cur, consumer="cli-handler", body=b"x", error="bad")
                for _ in range(2)
            ]
    monkeypatch.setenv("APP_DSN", database_dsn)
    monkeypatch.setenv("APP_EVENT_VERIFICATION", "broker")  # hand-made events, no store
    monkeypatch.setattr("eventplatform.cli.dlq.RETRY_PAGE", 2)  # 7 letters: 4 pages

    code, out = dlq(
        capsys, "retry", "--all", "--consumer", "tests.support.consumers:EFFECT_HANDLER"
    )

    assert code == 1
    for letter in good:
        assert out.count(f"dead letter {letter}: applied") == 1
    for letter in poison:
        assert out.count(f"dead letter {letter}: still fails") == 1  # met once, left open
    assert len(out.splitlines()) == 7
    assert sorted(rows(database_dsn, "SELECT aggregate FROM effects")) == sorted(
        (agg(f"P{n}"),) for n in range(1, 6)
    )
