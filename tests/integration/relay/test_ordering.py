"""The relay under concurrent writers and concurrent relays: every event once, in log order."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from decimal import Decimal
from typing import Any

import nats
import orjson
import psycopg
import pytest

from domain import ChangePrice, CreateProduct, Products, RenameProduct
from eventplatform.leases.leadership import LeaseConfig
from eventplatform.relay.runner import run_relay
from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from tests.support.platform import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

WRITERS = 12
PRODUCTS_PER_WRITER = 10
CHANGES_PER_PRODUCT = 19  # 20 events per product: 12 * 10 * 20 = 2,400 events


@pytest.fixture
def settings(database_dsn, nats_url, unique_name) -> Settings:
    create_schema(database_dsn, logs=["products"])
    return settings_for(
        database_dsn, nats_url, unique_name, relay_batch_size=250, pool_size=WRITERS
    )


def write_concurrently(settings: Settings) -> int:
    """12 threads create and change products at once; returns the number of events."""
    app = Products(settings)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for p in range(PRODUCTS_PER_WRITER):
                created = app.create(
                    CreateProduct(name=f"P{w}-{p}", sku=f"SKU-{w}-{p}", price=Decimal(1))
                )
                for c in range(CHANGES_PER_PRODUCT):
                    if c % 2:
                        app.rename(RenameProduct(product_id=created.aggregate_id, name=f"N{c}"))
                    else:
                        app.change_price(
                            ChangePrice(product_id=created.aggregate_id, price=Decimal(c + 2))
                        )
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        app.close()
    assert not errors, errors
    return WRITERS * PRODUCTS_PER_WRITER * (CHANGES_PER_PRODUCT + 1)


def log_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT notification_id FROM products_events ORDER BY 1").fetchall()
    return [int(r[0]) for r in rows]


def relay_position(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT position FROM eventplatform_relay_positions WHERE log = 'products'"
        ).fetchone()
    return int(row[0]) if row else 0


async def until_relayed(dsn: str, head: int, timeout: float = 30) -> None:
    """Polls the recorded position (written by another connection: no event to await)."""
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(relay_position, dsn) >= head:
                return
            await asyncio.sleep(0.1)


async def stream_envelopes(url: str, stream: str) -> list[dict[str, Any]]:
    """Every message of ``stream`` in stream order, decoded, with its Nats-Msg-Id."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            envelope = orjson.loads(msg.data or b"{}")
            envelope["msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
            out.append(envelope)
        return out
    finally:
        await nc.close()


def assert_exactly_once_in_log_order(envelopes: list[dict[str, Any]], ids: list[int]) -> None:
    sequences = [int(e["sequence"]) for e in envelopes]
    assert len(sequences) == len(set(sequences)), "an event was published twice"
    assert sequences == ids, "the stream does not hold the log, in notification-id order"
    assert [e["msg_id"] for e in envelopes] == [f"products:{s}" for s in sequences]
    versions: dict[str, list[int]] = defaultdict(list)
    for e in envelopes:
        versions[e["subject"]].append(e["aggregateversion"])
    for aggregate, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"versions of {aggregate}: {seen}"


@pytest.mark.parametrize("relays", [1, 3])
async def test_concurrent_writers_reach_the_stream_exactly_once_in_notification_order(
    settings, relays
):
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
        for _ in range(relays)
    ]
    try:
        written = await asyncio.to_thread(write_concurrently, settings)
        ids = log_ids(settings.dsn)
        assert len(ids) == written
        await until_relayed(settings.dsn, ids[-1])
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert_exactly_once_in_log_order(
        await stream_envelopes(settings.nats_url, settings.stream), ids
    )


async def test_relays_that_keep_taking_over_from_each_other_neither_duplicate_nor_reorder(
    settings,
):
    # Each relay stops after a few batches and a fresh one starts, while two stand by:
    # leadership changes hands many times during the load.
    stop_all = asyncio.Event()
    handovers = 0

    async def short_lived_relays() -> None:
        nonlocal handovers
        while not stop_all.is_set():
            stop = asyncio.Event()
            batches = 0

            def count(_batch: object, stop: asyncio.Event = stop) -> None:
                nonlocal batches
                batches += 1
                if batches >= 2:
                    stop.set()

            relay = asyncio.create_task(
                run_relay(settings, stop, on_batch=count, lease=LeaseConfig(ttl=1.0))
            )
            stopping = asyncio.create_task(stop_all.wait())
            await asyncio.wait([relay, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            stop.set()
            await relay
            handovers += 1

    runners = [asyncio.create_task(short_lived_relays()) for _ in range(3)]
    try:
        written = await asyncio.to_thread(write_concurrently, settings)
        ids = log_ids(settings.dsn)
        assert len(ids) == written
        await until_relayed(settings.dsn, ids[-1])
    finally:
        stop_all.set()
        await asyncio.wait_for(asyncio.gather(*runners), timeout=30)
    assert handovers >= 3
    assert_exactly_once_in_log_order(
        await stream_envelopes(settings.nats_url, settings.stream), ids
    )
