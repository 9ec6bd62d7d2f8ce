"""Handlers in partitions, and several aggregates in flight in one worker, each in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from domain import ChangePrice, CreateProduct, Products
from eventplatform.consumers import IdempotentEventHandler, run_handler
from eventplatform.relay import run_relay
from eventplatform.store import create_schema
from tests.support.audit import AuditedProjection
from tests.support.platform import settings_for
from tests.support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class InFlight:
    """Counts how many events a handler has in hand at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def recording(in_flight: InFlight) -> IdempotentEventHandler:
    def record(cur: psycopg.Cursor[Any], event: Any) -> None:
        with in_flight:
            time.sleep(0.01)  # a slow side effect, so that overlap can show
            cur.execute(
                "INSERT INTO effects (aggregate, version) VALUES (%s, %s)",
                (event.originator_id, event.originator_version),
            )

    return IdempotentEventHandler("prices", record, event_classes=AuditedProjection.event_classes)


@pytest.fixture
def dsn(database_dsn):
    create_schema(database_dsn, logs=["products"])
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE effects (seq bigserial, aggregate uuid, version int)")
    return database_dsn


def write(settings: Any, products: int) -> int:
    app = Products(settings)
    try:
        count = 0
        for n in range(products):
            created = app.create(CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(1)))
            for price in (2, 3, 4):
                app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(price)))
            count += 4
        return count
    finally:
        app.close()


def effects(dsn: str) -> list[tuple[Any, int]]:
    with psycopg.connect(dsn) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute("SELECT aggregate, version FROM effects ORDER BY seq")
        ]


def in_order_once(rows: list[tuple[Any, int]]) -> bool:
    versions: dict[Any, list[int]] = defaultdict(list)
    for aggregate, version in rows:
        versions[aggregate].append(version)
    return all(v == list(range(1, len(v) + 1)) for v in versions.values())


@pytest.mark.parametrize(
    ("partitions", "workers"),
    [(1, ["worker-a"]), (4, ["worker-a", "worker-b"])],
    ids=["one-worker", "partitions-over-two-workers"],
)
async def test_a_handler_keeps_each_aggregates_events_in_order_with_several_in_flight(
    dsn, nats_url, unique_name, partitions, workers
):
    # Unpartitioned, competing workers share one consumer and promise no order across
    # them (README); one worker does, and partitions do across workers.
    settings = settings_for(
        dsn,
        nats_url,
        unique_name,
        partitions=partitions,
        consumer_concurrency=4,
        consumer_fetch_timeout=0.2,
        projection_lease_ttl=1.0,
    )
    in_flight = InFlight()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        *(
            asyncio.create_task(run_handler(settings, recording(in_flight), stop, holder=h))
            for h in workers
        ),
    ]
    try:
        total = await asyncio.to_thread(write, settings, 12)
        await asyncio.to_thread(
            wait_until, lambda: len(effects(dsn)) >= total, timeout=60, what="all effects"
        )
        if partitions > 1:
            even = Counter({"worker-a": 2, "worker-b": 2})
            await asyncio.to_thread(
                wait_until, lambda: partition_holders(dsn) == even, timeout=20, what="an even split"
            )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    rows = effects(dsn)
    assert len(rows) == total == len(set(rows))
    assert in_order_once(rows)
    assert in_flight.most > 1


def partition_holders(dsn: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT holder FROM eventplatform_leases WHERE name LIKE 'handler:prices#%'"
            " AND expires_at > now()"
        ).fetchall()
    return Counter(r[0] for r in rows)
