"""Connection faults during a load: the relay rides them out, loses and repeats nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import nats
import orjson
import psycopg
import pytest

from domain import CreateProduct, Products
from eventplatform.leases.leadership import LeaseConfig
from eventplatform.relay.runner import run_relay
from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from tests.support.platform import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def relay_settings(dsn: str, nats_url: str, name: str) -> Settings:
    create_schema(dsn, logs=["products"])
    return settings_for(dsn, nats_url, name, relay_batch_size=20)


def create_products(settings: Settings, n: int, prefix: str) -> list[int]:
    app = Products(settings)
    try:
        return [
            app.create(
                CreateProduct(name=f"{prefix}{i}", sku=f"{prefix}{i}", price=Decimal(1))
            ).position
            for i in range(n)
        ]
    finally:
        app.close()


def relay_position(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT position FROM eventplatform_relay_positions").fetchone()
    except psycopg.OperationalError:
        return -1  # the server is restarting
    return int(row[0]) if row else 0


async def until_position(dsn: str, at_least: int, timeout: float = 30) -> None:
    """Polls the recorded position (written by the relay's connection: no event to await)."""
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(relay_position, dsn) >= at_least:
                return
            await asyncio.sleep(0.05)


async def stream_sequences(url: str, stream: str) -> list[int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [
            int(orjson.loads((await js.get_msg(stream, seq)).data or b"{}")["sequence"])
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


def after_batches(n: int, fault: Callable[[], None], done: asyncio.Event) -> Callable[[Any], None]:
    """An ``on_batch`` observer that injects ``fault`` right after the n-th batch: mid-load."""
    seen = 0

    def observe(_batch: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            fault()  # blocks the loop while the server goes down: the relay meets it next
            done.set()

    return observe


async def test_nats_stopped_and_started_during_a_load_loses_and_repeats_nothing(
    database_dsn, embedded_nats, unique_name
):
    settings = relay_settings(database_dsn, embedded_nats.url, unique_name)
    before = create_products(settings, 300, "A")
    stop, down = asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(
        run_relay(
            settings,
            stop,
            lease=LeaseConfig(ttl=1.0),
            on_batch=after_batches(3, embedded_nats.stop, down),
        )
    )
    try:
        await asyncio.wait_for(down.wait(), timeout=30)
        assert 0 < await asyncio.to_thread(relay_position, database_dsn) < before[-1]
        during = await asyncio.to_thread(create_products, settings, 50, "B")
        await asyncio.sleep(0.5)  # the outage goes on for a while
        await asyncio.to_thread(embedded_nats.start)
        after = await asyncio.to_thread(create_products, settings, 50, "C")
        await until_position(database_dsn, after[-1])
        assert not relay.done(), "the relay gave up"
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=30)
    assert await stream_sequences(embedded_nats.url, settings.stream) == before + during + after


async def test_postgres_restarted_during_a_load_loses_and_repeats_nothing(
    embedded_postgres, nats_url, unique_name
):
    settings = relay_settings(embedded_postgres.dsn, nats_url, unique_name)
    before = create_products(settings, 300, "A")
    stop, down = asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(
        run_relay(
            settings,
            stop,
            lease=LeaseConfig(ttl=1.0),
            on_batch=after_batches(3, embedded_postgres.stop, down),
        )
    )
    try:
        await asyncio.wait_for(down.wait(), timeout=30)
        await asyncio.sleep(0.5)  # the outage goes on for a while
        await asyncio.to_thread(embedded_postgres.start)
        assert 0 < await asyncio.to_thread(relay_position, embedded_postgres.dsn) < before[-1]
        after = await asyncio.to_thread(create_products, settings, 50, "B")
        await until_position(embedded_postgres.dsn, after[-1])
        assert not relay.done(), "the relay gave up"
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=30)
    assert await stream_sequences(nats_url, settings.stream) == before + after


async def test_a_dropped_listen_connection_is_replaced_and_relaying_resumes(
    database_dsn, nats_url, unique_name
):
    settings = relay_settings(database_dsn, nats_url, unique_name)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
    try:
        first = create_products(settings, 5, "A")
        await until_position(database_dsn, first[-1])
        with psycopg.connect(database_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query ILIKE 'LISTEN%%'"
            ).fetchone()
        assert killed is not None
        assert killed[0] == 1
        more = create_products(settings, 5, "B")
        await until_position(database_dsn, more[-1])
        assert not relay.done()
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=30)
    assert await stream_sequences(nats_url, settings.stream) == first + more


async def test_an_event_whose_notify_was_lost_is_relayed_by_the_re_poll(
    database_dsn, nats_url, unique_name
):
    settings = relay_settings(database_dsn, nats_url, unique_name)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
    try:
        first = create_products(settings, 1, "A")
        await until_position(database_dsn, first[-1])
        # Written without the recorder's NOTIFY: only the timed re-poll can find it.
        with psycopg.connect(database_dsn) as conn:
            row = conn.execute(
                "INSERT INTO products_events (originator_id, originator_version, topic, state)"
                " VALUES (gen_random_uuid(), 1, 'Product.Created', %s) RETURNING notification_id",
                (b'{"name":"silent"}',),
            ).fetchone()
        assert row is not None
        await until_position(database_dsn, int(row[0]), timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=30)
    assert await stream_sequences(nats_url, settings.stream) == [*first, int(row[0])]


def count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(
        text in r.getMessage() for r in caplog.records if r.name == "eventplatform.relay.runner"
    )


async def test_nats_down_at_start_is_retried_logged_once_and_resumed(
    database_dsn, embedded_nats, unique_name, caplog
):
    settings = relay_settings(database_dsn, embedded_nats.url, unique_name)
    positions = create_products(settings, 3, "A")
    embedded_nats.stop()
    stop = asyncio.Event()
    with caplog.at_level("INFO", logger="eventplatform.relay.runner"):
        relay = asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
        try:
            await asyncio.sleep(2.5)  # the outage lasts: nats-py retries every 0.5 s meanwhile
            assert count(caplog, "relay cannot reach NATS") == 1
            await asyncio.to_thread(embedded_nats.start)
            await until_position(database_dsn, positions[-1])
        finally:
            stop.set()
            await asyncio.wait_for(relay, timeout=30)
    assert count(caplog, "relay cannot reach NATS") == 1
    assert count(caplog, "relay reached NATS after") == 1


async def test_a_relay_waiting_for_nats_stops_promptly_when_told(
    database_dsn, embedded_nats, unique_name
):
    settings = relay_settings(database_dsn, embedded_nats.url, unique_name)
    embedded_nats.stop()
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(relay, timeout=3)
    assert relay.exception() is None
