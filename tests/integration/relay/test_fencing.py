"""Fencing and reconciliation: a deposed leader moves nothing; nothing is published twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import nats
import orjson
import psycopg
import pytest
import pytest_asyncio

from domain import CreateProduct, Products
from eventplatform.cli.main import main
from eventplatform.cli.status import read_status
from eventplatform.errors import PublishError
from eventplatform.leases.leadership import (
    Leadership,
    LeaseConfig,
    LeaseLost,
    PostgresLeases,
    relay_lease,
)
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage, stream_spec
from eventplatform.relay.event_log import PostgresEventLog
from eventplatform.relay.fencing import FencedPublisher, is_fence_error
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.relay import Relay, RelayConfig
from eventplatform.relay.routing import DefaultTopicMapper
from eventplatform.relay.runner import run_relay
from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from tests.support.platform import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def settings(database_dsn, nats_url, unique_name) -> Settings:
    create_schema(database_dsn, logs=["products"])
    return settings_for(database_dsn, nats_url, unique_name, duplicate_window=1.0)


def create_products(settings: Settings, n: int, prefix: str = "P") -> list[int]:
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


async def stream_sequences(settings: Settings) -> list[int | None]:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.stream)
        bodies = [
            orjson.loads((await js.get_msg(settings.stream, seq)).data or b"{}")
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
        return [int(b["sequence"]) if "sequence" in b else None for b in bodies]
    finally:
        await nc.close()


class RelayParts:
    """A relay wired by hand, so a test can play leader, deposed leader and crash."""

    def __init__(self, settings: Settings, conns: list[psycopg.AsyncConnection[Any]]) -> None:
        lease_conn, reader, listener = conns
        self.leases = PostgresLeases(lease_conn)
        self.positions = PostgresRelayPositions(reader)
        self.log = PostgresEventLog(reader, listener, "products")
        self.settings = settings
        self.broker = NatsBroker(settings.nats_servers)

    def relay(self, lease: Leadership | None, mapper: Any = None) -> Relay:
        return Relay(
            log=self.log,
            broker=self.broker,
            positions=self.positions,
            mapper=mapper or DefaultTopicMapper(self.settings.subject_prefix),
            config=RelayConfig(stream=self.settings.stream, poll_interval=0.1),
            lease=lease,
        )


@pytest_asyncio.fixture
async def parts(settings) -> AsyncIterator[RelayParts]:
    conns = [await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) for _ in range(3)]
    p = RelayParts(settings, conns)
    await p.broker.connect()
    await p.broker.ensure_stream(stream_spec(settings))
    try:
        yield p
    finally:
        await p.broker.close()
        for c in conns:
            await c.close()


async def expire_lease(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("UPDATE eventplatform_leases SET expires_at = now()")


async def test_a_deposed_leader_can_neither_record_its_position_nor_append_out_of_order(
    settings, parts
):
    first = create_products(settings, 3, "A")
    stop = asyncio.Event()
    old = Leadership(
        parts.leases, relay_lease("products"), holder="old", config=LeaseConfig(ttl=30)
    )
    assert await old.acquire(stop) is not None
    old_relay = parts.relay(old)
    assert await old_relay.relay_once() is not None
    # The old leader hangs; its lease expires and a new leader takes over and publishes.
    await expire_lease(settings.dsn)
    new = Leadership(
        parts.leases, relay_lease("products"), holder="new", config=LeaseConfig(ttl=30)
    )
    lease = await new.acquire(stop)
    assert lease is not None
    assert lease.token == old.token + 1
    second = create_products(settings, 3, "B")
    new_relay = parts.relay(new)
    new_relay.position = await parts.positions.get("products")
    assert await new_relay.relay_once() is not None
    third = create_products(settings, 3, "C")

    # The old leader wakes up and carries on where it was. Whatever the broker lets through
    # (a repeat it de-duplicates, or the true next event), its position write is refused.
    with pytest.raises((PublishError, LeaseLost)):
        await old_relay.relay_once()
    with pytest.raises(LeaseLost):
        await parts.positions.record("products", third[-1], token=old.token)
    assert await parts.positions.get("products") == second[-1]
    assert await stream_sequences(settings) in (first + second, first + second + third)


async def test_a_stale_expectation_of_the_stream_is_refused_by_the_broker(settings, parts):
    first = create_products(settings, 2, "A")
    relay = parts.relay(None)
    assert await relay.relay_once() is not None
    # Another publisher appends behind this relay's back (e.g. a new leader).
    await parts.broker.js.publish(
        f"{settings.subject_prefix}.other.publisher", b"{}", headers={"Nats-Msg-Id": "other:1"}
    )
    more = create_products(settings, 2, "B")
    with pytest.raises(PublishError) as refused:
        await relay.relay_once()
    assert is_fence_error(refused.value)
    # Re-reading the tail and resuming is what run() does after a fence error.
    await relay.reconcile()
    assert await relay.relay_once() is not None
    assert [s for s in await stream_sequences(settings) if s] == first + more


async def test_a_lost_message_inside_a_batch_fails_the_rest_instead_of_reordering(settings, parts):
    create_products(settings, 1)
    # What a relay would send after message 1 when message 2 was lost on the way: the fence
    # (expected last msg id = "products:2") refuses message 3.
    publisher = FencedPublisher(parts.broker.nc)
    ack = await publisher.publish_batch(
        [OutgoingMessage(f"{settings.subject_prefix}.Product.Created", b"{}", "products:1")]
    )
    assert ack[0].seq == 1
    subject = f"{settings.subject_prefix}.Product.Created"
    with pytest.raises(PublishError) as refused:
        await publisher.publish_batch(
            [
                OutgoingMessage(
                    subject, b"{}", "products:3", {"Nats-Expected-Last-Msg-Id": "products:2"}
                ),
                OutgoingMessage(
                    subject, b"{}", "products:4", {"Nats-Expected-Last-Msg-Id": "products:3"}
                ),
            ]
        )
    assert is_fence_error(refused.value)
    assert "products:3" in str(refused.value)
    assert len(await stream_sequences(settings)) == 1


async def test_a_crash_between_ack_and_position_republishes_nothing_after_the_window(
    settings, parts
):
    first = create_products(settings, 5, "A")
    relay = parts.relay(None)
    await relay.reconcile()
    assert await relay.relay_once() is not None
    # The crash: acked, but the position never got recorded.
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM eventplatform_relay_positions")
    await asyncio.sleep(1.5)  # the stream's duplicate window (1 s) passes: no broker-side dedup
    more = create_products(settings, 3, "B")

    restarted = parts.relay(None)
    restarted.position = await parts.positions.get("products")
    assert restarted.position == 0
    await restarted.reconcile()
    assert restarted.position == first[-1]
    assert await restarted.relay_once() is not None
    assert await stream_sequences(settings) == first + more


async def test_an_event_whose_topic_maps_to_no_subject_is_recorded_and_shown_in_status(
    settings, parts
):
    positions = create_products(settings, 3)
    relay = parts.relay(None, mapper=lambda topic: None)
    await relay.reconcile()
    batch = await relay.relay_once()
    assert batch is not None
    assert batch.unrouted == 3
    assert not batch.messages
    assert relay.position == positions[-1]
    async with await psycopg.AsyncConnection.connect(settings.dsn) as conn:
        cur = await conn.execute(
            "SELECT notification_id, topic FROM eventplatform_unrouted_events ORDER BY 1"
        )
        rows = await cur.fetchall()
    assert [r[0] for r in rows] == positions
    assert {r[1] for r in rows} == {"Product.Created"}
    status = read_status(settings.dsn, ["products"])
    assert status.logs[0].unrouted == 3


async def leader_of(dsn: str) -> str | None:
    """Polls the status until a relay leads (another process's state: no event to await)."""
    async with asyncio.timeout(10):
        while True:
            status = await asyncio.to_thread(read_status, dsn, ["products"])
            if status.logs[0].leader is not None:
                return status.logs[0].leader
            await asyncio.sleep(0.05)


async def test_status_shows_the_leader_and_since_when(settings, monkeypatch, capsys):
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop, holder="relay-under-test"))
    try:
        assert await leader_of(settings.dsn) == "relay-under-test"
        status = read_status(settings.dsn, ["products"]).logs[0]
        assert status.leader_since is not None
        assert status.lease_token == 1

        monkeypatch.setenv("APP_DSN", settings.dsn)
        assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status"]) == 0
        assert f"leader: relay-under-test since {status.leader_since}" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["logs"][0]
        assert (shown["leader"], shown["leader_since"]) == ("relay-under-test", status.leader_since)
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=10)
    # Released on a clean stop: nobody leads any more.
    assert read_status(settings.dsn, ["products"]).logs[0].leader is None
