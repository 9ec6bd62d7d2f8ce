"""Thousands of hostile messages mixed with real events: the real ones apply once, in order.

A seeded generator mutates real messages the ways a stranger could (NUL anywhere, bytes cut or
flipped, fields replaced by absurd integers, forged ids and positions, deep nesting, huge
values, invalid UTF-8) and interleaves them with the real events. A projection and a handler
consume the same stream. Every real event must take effect exactly once (the projection in
order), every hostile message must be dead-lettered, unless it is a faithful copy of a real
event (a republish: skipped), and both consumers must be alive at the end.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from domain import ChangePrice, CreateProduct, Products
from eventplatform.consumers import ConsumerConfig, HandlerConsumer, IdempotentEventHandler
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.settings import load_settings
from eventplatform.store import create_schema
from tests.support.audit import AuditedProjection, audit
from tests.support.consumers import rows, stream_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

HOSTILE = 2000
SEED = 20261125


def real_messages(dsn: str) -> list[bytes]:
    """Every stored event, as the relay encodes it, in log order."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM products_events ORDER BY notification_id"
        ).fetchall()
    return [
        cloudevents.encode(
            log="products",
            notification_id=n,
            aggregate_id=a,
            version=v,
            topic=t,
            state=bytes(s),
        )
        for n, a, v, t, s in found
    ]


def mutate(rng: random.Random, real: list[bytes], head: int) -> bytes:
    """One hostile message made from a random real one."""
    original = rng.choice(real)
    doc = orjson.loads(original)
    kind = rng.randrange(12)
    if kind == 0:  # a NUL anywhere
        at = rng.randrange(len(original))
        return original[:at] + b"\x00" + original[at:]
    if kind == 1:  # cut short
        return original[: rng.randrange(len(original))]
    if kind == 2:  # a byte flipped
        at = rng.randrange(len(original))
        return original[:at] + bytes([original[at] ^ (1 << rng.randrange(8))]) + original[at + 1 :]
    if kind == 3:  # an absurd integer, or a position written as one
        name = rng.choice(["sequence", "aggregateversion"])
        value = rng.choice([0, -1, 2**31, 2**63, 2**64 + 1, 10**40, int(doc["sequence"])])
        return orjson.dumps({**doc, name: "@@"}).replace(b'"@@"', str(value).encode())
    if kind == 4:  # a forged position beyond the head
        forged = cloudevents.sequence_text(head + rng.randrange(1, 10**6))
        return orjson.dumps({**doc, "sequence": forged})
    if kind == 5:  # a forged position inside the log, pointing at another event
        other = rng.randrange(1, head + 1)
        if other == int(doc["sequence"]):
            other = other % head + 1
        return orjson.dumps({**doc, "sequence": cloudevents.sequence_text(other)})
    if kind == 6:  # a forged id
        return orjson.dumps({**doc, "id": str(uuid.UUID(int=rng.getrandbits(128), version=4))})
    if kind == 7:  # forged data
        return orjson.dumps({**doc, "data": {**doc["data"], "name": rng.random()}})
    if kind == 8:  # deeply nested
        depth = rng.randrange(100, 3000)
        return orjson.dumps({**doc, "data": "@@"}).replace(
            b'"@@"', b'{"x":' * depth + b"1" + b"}" * depth
        )
    if kind == 9:  # huge
        return orjson.dumps(
            {**doc, "data": {**doc["data"], "x": "y" * rng.randrange(10**5, 10**6)}}
        )
    if kind == 10:  # invalid UTF-8 in a string
        return original.replace(b'"source":"products"', b'"source":"pro\xff\xfeducts"')
    # a NUL inside a text attribute
    name = rng.choice(["id", "source", "type", "subject", "time"])
    return orjson.dumps({**doc, name: f"{doc.get(name, '')}\x00"})


#: What a consumer reads of a message; a copy that keeps these is the event (a republish).
MEANING = (
    *("specversion", "id", "source", "type", "subject", "sequence", "aggregateversion"),
    *("datacontenttype", "dataschema", "time", "data"),
)


def meaning(body: bytes) -> bytes:
    """What a consumer reads of a message: unknown attributes are ignored, and a missing
    ``datacontenttype`` means JSON (CloudEvents 1.0)."""
    doc = {"datacontenttype": "application/json", **orjson.loads(body)}
    return orjson.dumps({k: doc.get(k) for k in MEANING}, option=orjson.OPT_SORT_KEYS)


def faithful(body: bytes, real: set[bytes]) -> bool:
    """A mutation that left the message meaning what a real one means (it is skipped)."""
    try:
        return meaning(body) in real
    except (orjson.JSONDecodeError, TypeError, AttributeError):  # unreadable, too deep, no object
        return False


def record(cur: psycopg.Cursor[Any], event: Any) -> None:
    cur.execute(
        "INSERT INTO effects VALUES (%s, %s)", (event.originator_id, event.originator_version)
    )


async def test_thousands_of_hostile_messages_among_real_events_take_no_effect(
    database_dsn, nats_url, unique_name
):
    dsn = database_dsn
    create_schema(dsn, logs=["products"], projections=[AuditedProjection()])
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE effects (aggregate uuid, version int, PRIMARY KEY (aggregate, version))"
        )
    app = Products(load_settings({}, dsn=dsn))
    try:
        for n in range(50):
            created = app.create(CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(1)))
            for price in (2, 3, 4):
                app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(price)))
    finally:
        app.close()
    real = real_messages(dsn)
    rng = random.Random(SEED)
    hostile = [mutate(rng, real, len(real)) for _ in range(HOSTILE)]
    canonical = {meaning(b) for b in real}
    expected_letters = sorted(b for b in hostile if not faithful(b, canonical))
    stream: list[bytes] = list(real)
    for body in hostile:  # hostile ones anywhere, real ones keep their order
        stream.insert(rng.randrange(len(stream) + 1), body)

    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        for start in range(0, len(stream), 500):
            await broker.publish_batch(
                [
                    OutgoingMessage(f"{prefix}.Product.Event", body, f"m{start + i}")
                    for i, body in enumerate(stream[start : start + 500])
                ]
            )
        with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
            worker = ProjectionWorker(
                projection=AuditedProjection(),
                broker=broker,
                pool=pool,
                config=WorkerConfig(
                    stream=prefix.upper(), filter_subject=f"{prefix}.>", fetch_timeout=0.5
                ),
            )
            consumer = HandlerConsumer(
                handler=IdempotentEventHandler(
                    "fuzz", record, event_classes=AuditedProjection.event_classes
                ),
                broker=broker,
                pool=pool,
                config=ConsumerConfig(
                    stream=prefix.upper(), subject_prefix=prefix, fetch_timeout=0.5, batch_size=500
                ),
            )
            await worker.start()
            await consumer.start()
            while (await asyncio.wait_for(worker.process_once(), timeout=60)).received:
                pass
            while (await asyncio.wait_for(consumer.process_once(), timeout=60)).received:
                pass
            # Both still work after the storm.
            assert (await worker.process_once()).received == 0
            assert (await consumer.process_once()).received == 0

    assert audit(dsn) == []
    assert sorted(rows(dsn, "SELECT aggregate, version FROM effects")) == sorted(
        rows(dsn, "SELECT originator_id, originator_version FROM products_events")
    )
    for consumer_name in ("audited", "fuzz"):
        letters = rows(
            dsn, "SELECT body FROM eventplatform_dead_letters WHERE consumer = %s", consumer_name
        )
        assert sorted(bytes(b) for (b,) in letters) == expected_letters, consumer_name
    assert rows(dsn, "SELECT count(*) FROM eventplatform_parked_events") == [(0,)]
