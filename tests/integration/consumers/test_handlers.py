"""Idempotent handlers on real PostgreSQL and NATS: one effect per event, retries, dead letters."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import nats.errors
import psycopg
import pytest

from eventplatform.consumers import (
    ConsumerConfig,
    HandlerConsumer,
    IdempotentEventHandler,
    retry_dead_letter,
    run_handler,
)
from eventplatform.consumers.dead_letters import dead_letter_subject
from eventplatform.consumers.retry import PermanentError, RetryPolicy
from eventplatform.settings import load_settings
from eventplatform.store.schema import create_schema
from tests.support.consumers import (
    TRUST_BROKER,
    agg,
    event_body,
    name_of,
    publish,
    rows,
    stream_for,
    subject_messages,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def dsn(database_dsn):
    create_schema(database_dsn)
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE effects (handler text, event_id text, aggregate text)")
    return database_dsn


def recording_effect(name: str, failures: list[BaseException] | None = None) -> Any:
    """A handler that writes one effect row per call, after raising ``failures`` in turn."""
    pending = list(failures or [])

    def handle(cur: psycopg.Cursor[Any], event: Any) -> None:
        if pending:
            raise pending.pop(0)
        cur.execute("INSERT INTO effects VALUES (%s, %s, %s)", (name, event.id, event.subject))

    return handle


def consumer_for(handler, broker, pool, prefix, **kwargs):
    config = ConsumerConfig(
        verification="broker",  # hand-made events, no event store
        stream=prefix.upper(),
        subject_prefix=prefix,
        batch_size=kwargs.pop("batch_size", 50),
        fetch_timeout=0.3,
        ack_wait=5.0,
        durable=kwargs.pop("durable", ""),
    )
    return HandlerConsumer(handler=handler, broker=broker, pool=pool, config=config, **kwargs)


async def drain(consumer, *, expect: int, timeout: float = 20.0):
    """Processes batches until ``expect`` messages were received; returns summed counts."""
    totals = {"received": 0, "handled": 0, "duplicates": 0, "dead_lettered": 0, "ignored": 0}
    async with asyncio.timeout(timeout):
        while totals["received"] < expect:
            batch = await consumer.process_once()
            for key in totals:
                totals[key] += getattr(batch, key)
    return totals


async def test_the_same_event_delivered_five_times_has_one_effect(dsn, pool, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    body = event_body("agg-1", 1, 1)
    # Five publishes of the same event under different message ids: the broker keeps all five.
    await publish(broker, prefix, [body] * 5)
    handler = IdempotentEventHandler("mailer", recording_effect("mailer"))

    first = await drain(consumer_for(handler, broker, pool, prefix), expect=5)
    # A restart from scratch (a new durable re-reads the stream): five more deliveries.
    again = await drain(consumer_for(handler, broker, pool, prefix, durable="mailer2"), expect=5)

    assert (first["handled"], first["duplicates"]) == (1, 4)
    assert (again["handled"], again["duplicates"]) == (0, 5)
    assert rows(dsn, "SELECT count(*) FROM effects") == [(1,)]


async def test_a_redelivered_unacked_message_has_no_second_effect(dsn, pool, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    handler = IdempotentEventHandler("mailer", recording_effect("mailer"))
    consumer = consumer_for(handler, broker, pool, prefix)
    await consumer.start()
    # The effect commits but the ack is lost: JetStream delivers the message again.
    msgs = await consumer._sub.fetch(1, timeout=2)
    envelope, event = handler.decode(msgs[0].data)
    assert await handler.handle(pool, envelope, event)
    await msgs[0].nak()

    totals = await drain(consumer, expect=1)

    assert totals["duplicates"] == 1
    assert rows(dsn, "SELECT count(*) FROM effects") == [(1,)]


async def test_transient_failures_are_retried_on_the_policy_schedule(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    policy = RetryPolicy(attempts=5, initial=0.2, multiplier=3.0, cap=1.0, jitter=0.5)
    failures: list[BaseException] = [
        ConnectionError("reset"),
        psycopg.errors.DeadlockDetected("deadlock"),
        TimeoutError("slow"),
    ]
    handler = IdempotentEventHandler("api", recording_effect("api", failures), policy=policy)
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    consumer = consumer_for(handler, broker, pool, prefix, sleep=sleep, rng=random.Random(7))
    totals = await drain(consumer, expect=1)

    assert totals["handled"] == 1
    assert slept == policy.delays(random.Random(7))[:3]
    assert rows(dsn, "SELECT count(*) FROM effects") == [(1,)]


async def test_a_permanent_failure_is_dead_lettered_at_once_and_the_consumer_goes_on(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("bad", 1, 1), event_body("good", 1, 2)])

    def handle(cur: psycopg.Cursor[Any], event: Any) -> None:
        if name_of(event.subject) == "bad":
            raise PermanentError("the address is invalid")
        cur.execute("INSERT INTO effects VALUES ('h', %s, %s)", (event.id, event.subject))

    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    handler = IdempotentEventHandler("h", handle)
    totals = await drain(consumer_for(handler, broker, pool, prefix, sleep=sleep), expect=2)

    assert (totals["handled"], totals["dead_lettered"]) == (1, 1)
    assert slept == []
    [(consumer, error, attempts, aggregate, body)] = rows(
        dsn, "SELECT consumer, error, attempts, aggregate, body FROM eventplatform_dead_letters"
    )
    assert (consumer, attempts, aggregate) == ("h", 1, agg("bad"))
    assert "the address is invalid" in error
    assert bytes(body) == event_body("bad", 1, 1)
    assert rows(dsn, "SELECT aggregate FROM effects") == [(agg("good"),)]
    announced = await subject_messages(
        broker, f"{prefix.upper()}_DLQ", dead_letter_subject(prefix, "h")
    )
    assert len(announced) == 1
    assert announced[0].data == event_body("bad", 1, 1)
    assert "the address is invalid" in announced[0].headers["Eventplatform-Error"]


async def test_an_undecodable_message_is_dead_lettered_and_acked(dsn, pool, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [b"\xffnot json", event_body("good", 1, 2)])
    handler = IdempotentEventHandler("h", recording_effect("h"))
    consumer = consumer_for(handler, broker, pool, prefix)

    totals = await drain(consumer, expect=2)
    await broker.nc.flush()  # acks are fire-and-forget: make sure the server has them
    info = await broker.js.consumer_info(prefix.upper(), consumer.durable)

    assert (totals["handled"], totals["dead_lettered"]) == (1, 1)
    [(error,)] = rows(dsn, "SELECT error FROM eventplatform_dead_letters")
    assert "not JSON" in error
    assert info.num_ack_pending == 0


async def test_retrying_a_fixed_dead_letter_twice_applies_it_once(dsn, pool, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    broken = [True]

    def handle(cur: psycopg.Cursor[Any], event: Any) -> None:
        if broken[0]:
            raise PermanentError("bug")
        cur.execute("INSERT INTO effects VALUES ('h', %s, %s)", (event.id, event.subject))

    handler = IdempotentEventHandler("h", handle)
    await drain(consumer_for(handler, broker, pool, prefix), expect=1)
    [(letter_id,)] = rows(dsn, "SELECT id FROM eventplatform_dead_letters")

    broken[0] = False  # the fix is deployed
    with psycopg.connect(dsn) as conn:
        first = retry_dead_letter(conn, handler, letter_id, verifier=TRUST_BROKER)
        second = retry_dead_letter(conn, handler, letter_id, verifier=TRUST_BROKER)

    assert (first, second) == ("applied", "not open")
    assert rows(dsn, "SELECT count(*) FROM effects") == [(1,)]
    assert rows(dsn, "SELECT status FROM eventplatform_dead_letters") == [("retried",)]


async def test_a_retrying_consumer_does_not_block_another_in_the_same_process(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    healthy_done = asyncio.Event()

    async def sleep_until_the_other_is_done(delay: float) -> None:
        # If retrying blocked the loop, the healthy consumer could never finish: deadlock.
        await healthy_done.wait()

    failing = consumer_for(
        IdempotentEventHandler("failing", recording_effect("failing", [ConnectionError("x")])),
        broker,
        pool,
        prefix,
        sleep=sleep_until_the_other_is_done,
    )
    healthy = consumer_for(
        IdempotentEventHandler("healthy", recording_effect("healthy")), broker, pool, prefix
    )

    async def run_healthy():
        await drain(healthy, expect=1)
        healthy_done.set()

    async with asyncio.timeout(20):
        await asyncio.gather(drain(failing, expect=1), run_healthy())

    assert sorted(rows(dsn, "SELECT handler FROM effects")) == [("failing",), ("healthy",)]


async def test_a_slow_handler_extends_its_ack_deadline_instead_of_being_redelivered(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    slow = recording_effect("slow")

    def handle(cur: psycopg.Cursor[Any], event: Any) -> None:
        time.sleep(2.5)  # well past ack_wait: only in-progress acks keep the message ours
        slow(cur, event)

    handler = IdempotentEventHandler("slow", handle)
    config = ConsumerConfig(
        verification="broker",  # hand-made events, no event store
        stream=prefix.upper(),
        subject_prefix=prefix,
        fetch_timeout=0.3,
        ack_wait=1.0,
    )
    consumer = HandlerConsumer(handler=handler, broker=broker, pool=pool, config=config)

    await consumer.start()
    rival = await broker.js.pull_subscribe_bind(durable=consumer.durable, stream=prefix.upper())

    async def rival_fetch() -> list[Any]:
        # Another worker on the same durable, asking while the handler is past ack_wait.
        await asyncio.sleep(1.2)
        try:
            return list(await rival.fetch(1, timeout=1.0))
        except nats.errors.TimeoutError:
            return []

    totals, stolen = await asyncio.gather(drain(consumer, expect=1), rival_fetch())

    assert totals["handled"] == 1
    assert stolen == []  # not redelivered mid-work
    assert rows(dsn, "SELECT count(*) FROM effects") == [(1,)]


async def test_a_message_that_never_finishes_is_dead_lettered_at_max_deliver(
    dsn, pool, broker, unique_name
):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body("agg-1", 1, 1)])
    handler = IdempotentEventHandler("h", recording_effect("h"))
    config = ConsumerConfig(
        verification="broker",  # hand-made events, no event store
        stream=prefix.upper(),
        subject_prefix=prefix,
        fetch_timeout=0.3,
        ack_wait=1.0,
        max_deliver=2,
    )
    consumer = HandlerConsumer(handler=handler, broker=broker, pool=pool, config=config)
    await consumer.start()
    # Delivery 1 dies with its consumer (fetched, never acked): JetStream redelivers it.
    assert len(await consumer._sub.fetch(1, timeout=2)) == 1

    totals = await drain(consumer, expect=1)

    assert totals["dead_lettered"] == 1
    [(error, attempts)] = rows(dsn, "SELECT error, attempts FROM eventplatform_dead_letters")
    assert "delivered 2 times without an outcome" in error
    assert attempts == 2
    assert rows(dsn, "SELECT count(*) FROM effects") == [(0,)]


async def test_run_handler_consumes_until_stopped(dsn, broker, unique_name):
    prefix = await stream_for(broker, unique_name)
    await publish(broker, prefix, [event_body(f"agg-{n}", 1, n) for n in range(1, 6)])
    settings = load_settings(
        {},
        dsn=dsn,
        nats_url=broker.nc.connected_url.geturl(),
        stream=prefix.upper(),
        subject_prefix=prefix,
        consumer_fetch_timeout=0.2,
        event_verification="broker",  # hand-made events, no event store
    )
    handler = IdempotentEventHandler("runner", recording_effect("runner"))
    stop = asyncio.Event()
    seen: list[int] = []

    def on_batch(batch):
        seen.append(batch.handled)
        if sum(seen) >= 5:
            stop.set()

    await asyncio.wait_for(run_handler(settings, handler, stop, on_batch=on_batch), timeout=20)

    assert sum(seen) == 5
    assert rows(dsn, "SELECT count(*) FROM effects") == [(5,)]
