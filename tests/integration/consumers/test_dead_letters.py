"""Dead letters for projections: poison never stops the consumer, repeats never apply twice."""

from __future__ import annotations

import asyncio

import orjson
import psycopg
import psycopg.errors
import pytest

from eventplatform.consumers.dead_letters import dead_letter_subject
from eventplatform.consumers.retry import RetryPolicy
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.store.schema import create_schema
from tests.support.consumers import (
    OrderedProjection,
    applied,
    event_body,
    name_of,
    publish,
    rows,
    stream_for,
    subject_messages,
    worker_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def ordered_worker(broker, pool, prefix, batch_size=500):
    return worker_for(
        OrderedProjection(), broker, pool, prefix, batch_size=batch_size, ack_wait=10.0
    )


@pytest.fixture
def dsn(database_dsn):
    create_schema(database_dsn, projections=[OrderedProjection()])
    return database_dsn


async def received(worker, count, timeout=60.0):
    """Processes until ``count`` messages were received; returns the summed results."""
    totals = {"received": 0, "applied": 0, "skipped": 0, "dead_lettered": 0, "parked": 0}
    async with asyncio.timeout(timeout):
        while totals["received"] < count:
            result = await worker.process_once()
            for key in totals:
                totals[key] += getattr(result, key)
    return totals


async def test_a_poison_message_among_ten_thousand_is_dead_lettered_and_the_rest_applied(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    bodies = [event_body(f"agg-{n % 100}", n // 100 + 1, n + 1) for n in range(10_000)]
    poison = b'{"specversion": "1.0", "id": "x", "truncated'
    bodies.insert(5_000, poison)
    await publish(broker, prefix, bodies)
    worker = await ordered_worker(broker, pool, prefix, batch_size=2_000)

    totals = await received(worker, 10_001)

    assert (totals["applied"], totals["dead_lettered"]) == (10_000, 1)
    assert len(applied(dsn)) == 10_000
    [(error, body)] = rows(dsn, "SELECT error, body FROM eventplatform_dead_letters")
    assert "not JSON" in error
    assert bytes(body) == poison
    assert worker.positions == {"products": 10_000}


async def test_the_same_event_delivered_five_times_is_applied_once(dsn, pool, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    body = event_body("A", 1, 1)
    # Duplicate publishes under new message ids (a relay that lost its position twice over).
    await publish(broker, prefix, [body, body, body])
    worker = await ordered_worker(broker, pool, prefix)
    first = await received(worker, 3)
    # A restart, then two more republishes arrive.
    restarted = await ordered_worker(broker, pool, prefix)
    await publish(broker, prefix, [body, body], first_msg_id=10)
    second = await received(restarted, 2)

    assert (first["applied"], first["skipped"]) == (1, 2)
    assert (second["applied"], second["skipped"]) == (0, 2)
    assert applied(dsn) == [("A", 1)]


async def test_every_malformed_shape_ends_dead_lettered_and_good_events_still_apply(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    good = orjson.loads(event_body("G", 1, 1))
    malformed = [
        b"",
        b"\x00\x01\x02",
        b"[1, 2, 3]",
        b'"just a string"',
        orjson.dumps({**good, "specversion": "0.3"}),
        orjson.dumps({**good, "id": 42}),
        orjson.dumps({**good, "sequence": "-000000000000000001"}),
        orjson.dumps({**good, "data": "not an object"}),
        orjson.dumps({k: v for k, v in good.items() if k != "subject"}),
        event_body("G", 1, 1)[:-20],
        orjson.dumps({**good, "data": {"blob": "x" * 500_000}, "id": 7}),
    ]
    goods = [event_body("G", n, n) for n in range(1, 4)]
    await publish(broker, prefix, [goods[0], *malformed, goods[1], goods[2]])
    worker = await ordered_worker(broker, pool, prefix, batch_size=5)

    totals = await received(worker, len(malformed) + 3)

    assert totals["applied"] == 3
    assert totals["dead_lettered"] == len(malformed)
    assert applied(dsn) == [("G", 1), ("G", 2), ("G", 3)]
    stored = {bytes(r[0]) for r in rows(dsn, "SELECT body FROM eventplatform_dead_letters")}
    assert stored == set(malformed)


async def test_dead_letters_are_announced_in_their_own_stream_not_among_the_events(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [b"poison", event_body("A", 1, 1)])
    worker = await ordered_worker(broker, pool, prefix)
    await received(worker, 2)

    announced = await subject_messages(
        broker, f"{prefix.upper()}_DLQ", dead_letter_subject(prefix, "ordered")
    )
    assert [m.data for m in announced] == [b"poison"]
    assert announced[0].headers["Eventplatform-Consumer"] == "ordered"
    # The event stream keeps only the log's messages: nothing for the relay's fence to trip
    # on, nothing for consumers of the events to skip.
    assert (await broker.js.stream_info(prefix.upper())).state.messages == 2
    assert (await worker.process_once()).received == 0
    assert rows(dsn, "SELECT count(*) FROM eventplatform_dead_letters") == [(1,)]


class FlakyProjection(OrderedProjection):
    """Raises a deadlock for its first ``failures`` applies of aggregate F."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def apply(self, cur, event):
        if name_of(event.subject) == "F" and self.failures:
            self.failures -= 1
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        super().apply(cur, event)


async def flaky_worker(broker, pool, prefix, projection, policy, slept):
    async def sleep(delay: float) -> None:
        slept.append(delay)

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
            policy=policy,
        ),
        sleep=sleep,
    )
    await worker.start()
    return worker


async def test_a_transient_failure_retries_the_batch_on_the_policy_schedule_then_applies_once(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("E", 1, 1), event_body("F", 1, 2)])
    policy = RetryPolicy(attempts=5, initial=0.5, multiplier=2.0, cap=1.5, jitter=0.0)
    slept: list[float] = []
    worker = await flaky_worker(broker, pool, prefix, FlakyProjection(3), policy, slept)

    totals = await received(worker, 2)

    assert slept == policy.delays()[:3] == [0.5, 1.0, 1.5]
    assert (totals["applied"], totals["dead_lettered"]) == (2, 0)
    assert applied(dsn) == [("E", 1), ("F", 1)]


async def test_a_failure_that_stays_transient_parks_after_the_attempts_and_others_flow(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("F", 1, 1), event_body("E", 1, 2)])
    policy = RetryPolicy(attempts=3, initial=0.01, cap=0.01, jitter=0.0)
    slept: list[float] = []
    worker = await flaky_worker(broker, pool, prefix, FlakyProjection(10**6), policy, slept)

    totals = await received(worker, 2)

    assert len(slept) == 2  # attempts 1 and 2 retried; attempt 3 isolates and parks
    assert (totals["applied"], totals["dead_lettered"]) == (1, 1)
    assert applied(dsn) == [("E", 1)]
    [(error, attempts, parked)] = rows(
        dsn, "SELECT error, attempts, parked FROM eventplatform_dead_letters"
    )
    assert "deadlock detected" in error
    assert (attempts, parked) == (3, True)
