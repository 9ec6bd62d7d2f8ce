"""Parking: a failing aggregate waits, the others flow, a release replays it in order."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from eventplatform.consumers.parking import release
from eventplatform.store.schema import create_schema
from tests.support.consumers import (
    TRUST_BROKER,
    OrderedProjection,
    agg,
    applied,
    event_body,
    publish,
    rows,
    stream_for,
    worker_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def parking_worker(projection, broker, pool, prefix):
    return worker_for(projection, broker, pool, prefix, batch_size=4, ack_wait=5.0)


@pytest.fixture
def projection():
    return OrderedProjection(broken={("A", 2)})


@pytest.fixture
def dsn(database_dsn, projection):
    create_schema(database_dsn, projections=[projection])
    return database_dsn


async def process_until(worker, position, timeout=20.0):
    async with asyncio.timeout(timeout):
        while worker.positions.get("products", 0) < position:
            await worker.process_once()


async def test_a_failing_event_parks_only_its_aggregate_and_release_applies_it_in_order(
    dsn, pool, broker, unique_name, projection
):
    prefix = await stream_for(broker, unique_name)
    # Two batches of four: A's failure in the first must still hold back A3 in the second.
    stream = [("A", 1), ("B", 1), ("A", 2), ("B", 2), ("A", 3), ("B", 3), ("A", 4), ("B", 4)]
    await publish(broker, prefix, [event_body(a, v, n) for n, (a, v) in enumerate(stream, 1)])
    worker = await parking_worker(projection, broker, pool, prefix)

    await process_until(worker, 8)

    assert applied(dsn) == [("A", 1), ("B", 1), ("B", 2), ("B", 3), ("B", 4)]
    [(letter_id, error, parked)] = rows(
        dsn,
        "SELECT id, error, parked FROM eventplatform_dead_letters WHERE aggregate = %s",
        agg("A"),
    )
    assert parked
    assert "cannot apply A v2" in error
    assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(2,)]

    projection.broken.clear()  # the fix is deployed
    with psycopg.connect(dsn) as conn:
        first = release(conn, projection, letter_id, verifier=TRUST_BROKER)
        second = release(conn, projection, letter_id, verifier=TRUST_BROKER)

    assert (first.status, first.applied) == ("applied", 3)
    assert (second.status, second.applied) == ("not open", 0)
    assert [e for e in applied(dsn) if e[0] == "A"] == [("A", 1), ("A", 2), ("A", 3), ("A", 4)]
    assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(0,)]

    # After the release, A's new events flow again.
    await publish(broker, prefix, [event_body("A", 5, 9)], first_msg_id=100)
    await process_until(worker, 9)
    assert applied(dsn)[-1] == ("A", 5)


async def test_a_release_that_still_fails_changes_nothing_and_records_the_error(
    dsn, pool, broker, unique_name, projection
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("A", 1, 1), event_body("A", 2, 2)])
    projection.broken.add(("A", 1))
    worker = await parking_worker(projection, broker, pool, prefix)
    await process_until(worker, 2)
    [(letter_id,)] = rows(dsn, "SELECT id FROM eventplatform_dead_letters")

    with psycopg.connect(dsn) as conn, pytest.raises(Exception, match="cannot apply A v1"):
        release(conn, projection, letter_id, verifier=TRUST_BROKER)

    assert applied(dsn) == []
    assert rows(dsn, "SELECT status, attempts FROM eventplatform_dead_letters") == [("open", 2)]
    assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(1,)]


async def test_an_event_for_a_parked_aggregate_from_an_undecodable_message_parks_it(
    dsn, pool, broker, unique_name, projection
):
    prefix = await stream_for(broker, unique_name)
    body = event_body("C", 1, 1).replace(b'"aggregateversion":1', b'"aggregateversion":"one"')
    await publish(broker, prefix, [body, event_body("D", 1, 2)])
    worker = await parking_worker(projection, broker, pool, prefix)

    async with asyncio.timeout(20):
        while not rows(dsn, "SELECT 1 FROM eventplatform_dead_letters"):
            await worker.process_once()
    await process_until(worker, 2)

    assert applied(dsn) == [("D", 1)]
    [(error, aggregate)] = rows(dsn, "SELECT error, aggregate FROM eventplatform_dead_letters")
    assert "aggregateversion" in error
    assert aggregate is None  # the envelope itself is unreadable: nothing to park behind
