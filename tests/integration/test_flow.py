"""The whole flow on real PostgreSQL and NATS: command → store → relay → JetStream → read model."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import orjson
import psycopg
import pytest

from domain import ChangePrice, CreateProduct, DiscontinueProduct, Products, RenameProduct
from eventplatform.errors import CommandRejected, ConcurrencyConflict
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection, ProductViews
from tests.support.platform import (
    CountingProjection,
    applied_counts,
    running,
    settings_for,
    stream_messages,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(database_dsn, nats_url, unique_name):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(
        database_dsn, logs=["products"], projections=[ProductViewProjection(), CountingProjection()]
    )
    return settings


@pytest.fixture
def app(settings):
    app = Products(settings)
    yield app
    app.close()


def wait(settings, projection, position):
    return asyncio.to_thread(
        wait_for,
        settings.dsn,
        projection=projection,
        log="products",
        position=position,
        timeout=15,
    )


def head(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(max(notification_id), 0) FROM products_events"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.asyncio
async def test_a_command_becomes_visible_in_the_read_model(settings, app):
    async with running(settings, ProductViewProjection()):
        created = app.create(CreateProduct(name="Mug", sku="MUG-1", price=Decimal("9.50")))
        app.rename(RenameProduct(product_id=created.aggregate_id, name="Big mug"))
        last = app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal("12")))
        assert last.position > created.position
        await wait(settings, "product_view", last.position)

    from psycopg_pool import ConnectionPool

    with ConnectionPool(settings.dsn, min_size=1, max_size=1) as pool:
        view = ProductViews(pool).get(created.aggregate_id)
        listed = ProductViews(pool).list()
    assert view is not None
    assert (view.name, view.sku, view.price, view.version) == (
        "Big mug",
        "MUG-1",
        Decimal("12.00"),
        3,
    )
    assert listed == [view]


@pytest.mark.asyncio
async def test_every_event_is_published_once_in_order_as_a_cloudevent(settings, app):
    results = [
        app.create(CreateProduct(name=f"P{i}", sku=f"SKU-{i}", price=Decimal(i + 1)))
        for i in range(20)
    ]
    async with running(settings, CountingProjection()):
        await wait(settings, "counting", results[-1].position)
    messages = await stream_messages(settings.nats_url, settings.stream)
    sequences = [int(orjson.loads(m.data)["sequence"]) for m in messages]
    assert sequences == sorted(sequences) == [r.position for r in results]
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"products:{s}" for s in sequences]
    assert {m.subject for m in messages} == {f"{settings.subject_prefix}.Product.Created"}


@pytest.mark.asyncio
async def test_a_relay_that_forgot_its_position_republishes_nothing_twice(settings, app):
    first = [app.create(CreateProduct(name="A", sku=f"A{i}", price=Decimal(1))) for i in range(5)]
    async with running(settings, CountingProjection()):
        await wait(settings, "counting", first[-1].position)
    # A crash between ack and position record looks like this: the position is behind.
    with psycopg.connect(settings.dsn) as conn:
        conn.execute("DELETE FROM eventplatform_relay_positions")
    more = [app.create(CreateProduct(name="B", sku=f"B{i}", price=Decimal(1))) for i in range(5)]
    async with running(settings, CountingProjection()):
        await wait(settings, "counting", more[-1].position)
    assert len(await stream_messages(settings.nats_url, settings.stream)) == 10
    counts = applied_counts(settings.dsn)
    assert len(counts) == 10
    assert set(counts.values()) == {1}


@pytest.mark.asyncio
async def test_a_restarted_projection_resumes_without_applying_anything_twice(settings, app):
    first = [app.create(CreateProduct(name="A", sku=f"A{i}", price=Decimal(1))) for i in range(5)]
    async with running(settings, CountingProjection()):
        await wait(settings, "counting", first[-1].position)
    async with running(settings, relay=True):
        more = [
            app.create(CreateProduct(name="B", sku=f"B{i}", price=Decimal(1))) for i in range(5)
        ]
        for _ in range(100):
            if len(await stream_messages(settings.nats_url, settings.stream)) == 10:
                break
            await asyncio.sleep(0.05)
    async with running(settings, CountingProjection(), relay=False):
        await wait(settings, "counting", more[-1].position)
    counts = applied_counts(settings.dsn)
    assert len(counts) == 10
    assert set(counts.values()) == {1}


@pytest.mark.asyncio
async def test_a_message_delivered_again_has_no_second_effect(settings, app):
    created = app.create(CreateProduct(name="A", sku="A1", price=Decimal(1)))
    async with running(settings, CountingProjection()):
        await wait(settings, "counting", created.position)
        (original,) = await stream_messages(settings.nats_url, settings.stream)
        # Past JetStream's de-duplication: same event, new message id, as after a window.
        async with NatsBroker([settings.nats_url]) as broker:
            await broker.publish_batch(
                [OutgoingMessage(original.subject, original.data, msg_id="redelivered-1")] * 1
                + [OutgoingMessage(original.subject, original.data, msg_id="redelivered-2")]
            )
        renamed = app.rename(RenameProduct(product_id=created.aggregate_id, name="B"))
        await wait(settings, "counting", renamed.position)
    assert len(await stream_messages(settings.nats_url, settings.stream)) == 4
    assert applied_counts(settings.dsn) == {
        (created.aggregate_id, 1): 1,
        (created.aggregate_id, 2): 1,
    }


@pytest.mark.asyncio
async def test_a_command_breaking_a_rule_is_refused_and_writes_nothing(settings, app):
    created = app.create(CreateProduct(name="A", sku="A1", price=Decimal(1)))
    app.discontinue(DiscontinueProduct(product_id=created.aggregate_id))
    before = head(settings.dsn)
    with pytest.raises(CommandRejected, match="discontinued"):
        app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(2)))
    assert head(settings.dsn) == before


@pytest.mark.asyncio
async def test_concurrent_commands_on_one_aggregate_conflict_instead_of_losing_an_update(
    settings, app
):
    created = app.create(CreateProduct(name="A", sku="A1", price=Decimal(1)))
    other = Products(settings)
    try:
        mine = app.get(created.aggregate_id)
        theirs = other.get(created.aggregate_id)
        mine.rename("Mine")
        theirs.change_price(Decimal(5))
        app.save(mine)
        with pytest.raises(ConcurrencyConflict, match="concurrent update"):
            other.save(theirs)
    finally:
        other.close()
    reloaded = app.get(created.aggregate_id)
    assert (reloaded.name, reloaded.price, reloaded.version) == ("Mine", Decimal(1), 2)


def test_schema_creation_is_safe_when_several_processes_run_it_at_once(database_dsn):
    errors: list[BaseException] = []

    def create() -> None:
        try:
            create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert head(database_dsn) == 0
