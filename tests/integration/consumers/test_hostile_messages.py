"""Messages written by a stranger never wedge, crash, skip or fool a consumer (issue 10).

Real events come from the store, encoded exactly as the relay encodes them; hostile messages
are published between them by hand, as anyone allowed to publish on the subjects could.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from domain import ChangePrice, CreateProduct, Products, RenameProduct
from eventplatform.consumers import ConsumerConfig, HandlerConsumer, IdempotentEventHandler
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.settings import load_settings
from eventplatform.store import create_schema
from tests.support.audit import AuditedProjection, audit, publish_stored
from tests.support.consumers import rows, stream_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def dsn(database_dsn):
    create_schema(database_dsn, logs=["products"], projections=[AuditedProjection()])
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE effects (event_id text PRIMARY KEY, price numeric)")
    return database_dsn


@pytest.fixture
def products(dsn):
    app = Products(load_settings({}, dsn=dsn))
    yield app
    app.close()


def seed(products: Products) -> list[Any]:
    """Two products, each with a few changes: eight stored events."""
    ids = []
    for n in range(2):
        created = products.create(CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(1)))
        products.rename(RenameProduct(product_id=created.aggregate_id, name=f"q{n}"))
        products.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(2)))
        products.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(3)))
        ids.append(created.aggregate_id)
    return ids


def stored_message(dsn: str, notification_id: int) -> dict[str, Any]:
    """The CloudEvent the relay publishes for one stored event, as a dict to tamper with."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM products_events"
            " WHERE notification_id = %s",
            (notification_id,),
        ).fetchone()
    assert row is not None
    body = cloudevents.encode(
        log="products",
        notification_id=notification_id,
        aggregate_id=row[0],
        version=row[1],
        topic=row[2],
        state=bytes(row[3]),
    )
    return dict(orjson.loads(body))


def raw(doc: dict[str, Any], **ints: int) -> bytes:
    """``doc`` as JSON, with integers written by hand (orjson refuses those beyond 64 bits)."""
    body = orjson.dumps({**doc, **{k: "@@" for k in ints}})
    for name, value in ints.items():
        body = body.replace(f'"{name}":"@@"'.encode(), f'"{name}":{value}'.encode())
    return body


def hostile(kind: str, dsn: str) -> tuple[bytes, dict[str, str] | None]:
    """One hostile message of ``kind`` (body, headers), made from real stored events.

    It is published after event 2 and before event 3, so a message about event 3 or later
    arrives before the real one.
    """
    third = stored_message(dsn, 3)
    if kind == "nul-in-subject":
        return orjson.dumps({**third, "subject": third["subject"] + "\x00"}), None
    if kind == "nul-in-source":
        return orjson.dumps({**third, "source": "products\x00"}), None
    if kind == "nul-in-id":
        return orjson.dumps({**third, "id": "\x00"}), None
    if kind == "nul-in-a-header":
        return b"\x00not json", {"X-Evil": "a\x00b", "Nats-Msg-Id": "evil\x00"}
    if kind == "sequence-2-to-the-63":
        return orjson.dumps({**third, "sequence": str(2**63)}), None
    if kind == "sequence-as-an-integer":
        return raw(third, sequence=3), None
    if kind == "absurd-integer":
        return raw(third, aggregateversion=10**30), None
    if kind == "forged-position-past-the-head":
        return orjson.dumps({**third, "sequence": cloudevents.sequence_text(1000)}), None
    if kind == "forged-event-of-a-real-aggregate":
        # A real aggregate's next version, undecodable: believed, it would park the aggregate.
        data = {**third["data"], "name": 5}
        forged = {"sequence": cloudevents.sequence_text(9), "aggregateversion": 5, "data": data}
        return orjson.dumps({**third, **forged}), None
    if kind == "forged-data-at-a-real-position":
        data = {**third["data"], "price": "0.01"}
        return orjson.dumps({**third, "data": data}), None
    if kind == "forged-missing-field":  # event 3 is a PriceChanged
        data = {k: v for k, v in third["data"].items() if k != "price"}
        return orjson.dumps({**third, "data": data}), None
    if kind == "deeply-nested":
        return b'{"specversion":"1.0","data":' + b"[" * 5000 + b"]" * 5000 + b"}", None
    if kind == "huge":
        return orjson.dumps({**third, "data": {"x": "y" * 900_000}}), None
    if kind == "invalid-utf-8":
        return b'{"specversion":"1.0","id":"\xff\xfe"}', None
    raise AssertionError(kind)


KINDS = [
    "nul-in-subject",
    "nul-in-source",
    "nul-in-id",
    "nul-in-a-header",
    "sequence-2-to-the-63",
    "sequence-as-an-integer",
    "absurd-integer",
    "forged-position-past-the-head",
    "forged-event-of-a-real-aggregate",
    "forged-data-at-a-real-position",
    "forged-missing-field",
    "deeply-nested",
    "huge",
    "invalid-utf-8",
]


async def publish_hostile(broker: NatsBroker, prefix: str, body: bytes, headers: Any) -> None:
    await broker.js.publish(f"{prefix}.Product.Renamed", body, headers=headers)


async def drain(process_once: Any, *, batches: int = 30) -> None:
    """Runs ``process_once`` until a fetch comes back empty (a wedged consumer fails here)."""
    for _ in range(batches):
        result = await asyncio.wait_for(process_once(), timeout=20)
        if result.received == 0:
            return
    raise AssertionError(f"the consumer still had messages after {batches} batches")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hostile_message_among_real_events_is_dead_lettered_and_every_real_one_applies_once_in_order(  # noqa: E501
    dsn, products, nats_url, unique_name, kind
):
    seed(products)
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix, after=0, upto=2)
        body, headers = hostile(kind, dsn)
        await publish_hostile(broker, prefix, body, headers)
        await publish_stored(broker, dsn, prefix, after=2)
        with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
            worker = ProjectionWorker(
                projection=AuditedProjection(),
                broker=broker,
                pool=pool,
                config=WorkerConfig(
                    stream=prefix.upper(), filter_subject=f"{prefix}.>", fetch_timeout=0.3
                ),
            )
            await worker.start()
            await drain(worker.process_once)

            assert audit(dsn) == []
            assert worker.positions == {"products": 8}
            [(error, parked, body_kept)] = rows(
                dsn, "SELECT error, parked, body FROM eventplatform_dead_letters"
            )
            assert not parked
            assert bytes(body_kept) == body
            assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(0,)]
            if kind.startswith("forged"):
                assert error.startswith("forged")

            # Alive and well: the next real event is applied too.
            products.create(CreateProduct(name="later", sku="L", price=Decimal(1)))
            await publish_stored(broker, dsn, prefix, after=8)
            await drain(worker.process_once)
            assert audit(dsn) == []


def record_price(cur: psycopg.Cursor[Any], event: Any) -> None:
    cur.execute(
        "INSERT INTO effects VALUES (%s, %s)",
        (f"{event.originator_id}:{event.originator_version}", getattr(event, "price", None)),
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hostile_message_never_reaches_a_handler_nor_stops_it(
    dsn, products, nats_url, unique_name, kind
):
    seed(products)
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix, after=0, upto=2)
        body, headers = hostile(kind, dsn)
        await publish_hostile(broker, prefix, body, headers)
        await publish_stored(broker, dsn, prefix, after=2)
        with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
            handler = IdempotentEventHandler(
                "prices", record_price, event_classes=AuditedProjection.event_classes
            )
            consumer = HandlerConsumer(
                handler=handler,
                broker=broker,
                pool=pool,
                config=ConsumerConfig(
                    stream=prefix.upper(), subject_prefix=prefix, fetch_timeout=0.3
                ),
            )
            await consumer.start()
            await drain(consumer.process_once)

    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT originator_id || ':' || originator_version FROM products_events"
        ).fetchall()
    assert sorted(rows(dsn, "SELECT event_id FROM effects")) == sorted(stored)
    assert rows(dsn, "SELECT price FROM effects WHERE price = 0.01") == []
    [(error,)] = rows(dsn, "SELECT error FROM eventplatform_dead_letters")
    if kind.startswith("forged"):
        assert error.startswith("forged")


async def test_without_the_store_to_check_against_missing_and_mistyped_fields_still_never_reach_the_handler(  # noqa: E501
    dsn, products, nats_url, unique_name
):
    seed(products)
    renamed = stored_message(dsn, 2)
    missing = {k: v for k, v in renamed["data"].items() if k != "name"}
    mistyped = {**renamed["data"], "name": 42}
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        for data in (missing, mistyped):
            await publish_hostile(broker, prefix, orjson.dumps({**renamed, "data": data}), None)
        with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
            consumer = HandlerConsumer(
                handler=IdempotentEventHandler(
                    "names", record_price, event_classes=AuditedProjection.event_classes
                ),
                broker=broker,
                pool=pool,
                config=ConsumerConfig(
                    stream=prefix.upper(),
                    subject_prefix=prefix,
                    fetch_timeout=0.3,
                    verification="broker",
                ),
            )
            await consumer.start()
            await drain(consumer.process_once)

    assert rows(dsn, "SELECT count(*) FROM effects") == [(0,)]
    errors = sorted(e for (e,) in rows(dsn, "SELECT error FROM eventplatform_dead_letters"))
    assert errors == [
        "Product.Renamed field 'name': Input should be a valid string, got int",
        "Product.Renamed lacks its field 'name'",
    ]
