"""Exactly-once does not rest on leadership: a worker that lost its lease cannot commit.

DESIGN invariant 7. Each spec makes two workers believe they may apply, the way a hung, cut-off
or slow process does, and shows that only one commit lands.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from domain import ChangePrice, CreateProduct, Products
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.intake import read_message
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig, term_consumer_name
from eventplatform.errors import BrokerUnavailable
from eventplatform.leases import FencedOff, LeaseFence, PostgresLeases, projection_lease
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.settings import load_settings
from eventplatform.store import create_schema
from tests.support.audit import AuditedProjection, audit, publish_stored
from tests.support.consumers import rows, stream_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

LEASE = projection_lease(AuditedProjection.name)


@pytest.fixture
def dsn(database_dsn):
    create_schema(database_dsn, logs=["products"], projections=[AuditedProjection()])
    app = Products(load_settings({}, dsn=database_dsn))
    try:
        for n in range(3):
            created = app.create(CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(1)))
            app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(2)))
    finally:
        app.close()
    return database_dsn


async def take_lease(dsn: str, holder: str) -> int:
    """Takes the projection's lease for ``holder`` (expiring whoever held it); its token."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE eventplatform_leases SET expires_at = now() WHERE name = %s", (LEASE,)
        )
        lease = await PostgresLeases(conn).try_acquire(LEASE, holder, ttl=60)
    assert lease is not None
    return lease.token


def worker(broker, pool, prefix, *, token: int | None = None) -> ProjectionWorker:
    projection = AuditedProjection()
    return ProjectionWorker(
        projection=projection,
        broker=broker,
        pool=pool,
        config=WorkerConfig(
            stream=prefix.upper(),
            filter_subject=f"{prefix}.>",
            fetch_timeout=0.3,
            batch_size=2,
            durable=term_consumer_name(projection, token) if token else "",
        ),
        fence=LeaseFence(LEASE, token) if token else None,
    )


async def test_a_worker_whose_lease_was_taken_over_cannot_commit_and_nothing_applies_twice(
    dsn, nats_url, unique_name
):
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix)
        with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
            old = worker(broker, pool, prefix, token=await take_lease(dsn, "old"))
            await old.start()
            await old.process_once()  # events 1 and 2, committed under the old token

            # The old worker hangs; its lease runs out and another worker takes over.
            new = worker(broker, pool, prefix, token=await take_lease(dsn, "new"))

            # The old worker wakes up with a batch in hand: its commit is refused.
            with pytest.raises((FencedOff, BrokerUnavailable)):
                await old.process_once()
            await new.start()
            while (await new.process_once()).received:
                pass

    assert audit(dsn) == []


async def test_a_fetched_batch_is_refused_at_commit_when_the_lease_moved_meanwhile(
    dsn, nats_url, unique_name
):
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix)
        with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
            old = worker(broker, pool, prefix, token=await take_lease(dsn, "old"))
            await old.start()
            # The lease moves between the fetch and the commit: exactly the window a hung
            # worker sits in when it wakes up.
            original_apply = old._batches.apply

            def apply_after_takeover(*args, **kwargs):
                asyncio.run(take_lease(dsn, "new"))  # runs in the worker's thread
                return original_apply(*args, **kwargs)

            old._batches.apply = apply_after_takeover  # type: ignore[method-assign]
            with pytest.raises(FencedOff, match="no longer held with token"):
                await old.process_once()

    assert rows(dsn, "SELECT count(*) FROM audited_applies") == [(0,)]
    assert rows(dsn, "SELECT count(*) FROM eventplatform_tracking") == [(0,)]


async def test_two_workers_that_start_from_one_position_cannot_both_commit_even_without_a_lease(
    dsn, nats_url, unique_name
):
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix)
        with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
            first = worker(broker, pool, prefix)
            await first.start()
            second = worker(broker, pool, prefix)
            second._batches.load()  # the same committed position as the first one
            msgs = await first._sub.fetch(2, timeout=1)
            intakes = [
                read_message(m.data, EventDecoder(AuditedProjection.event_classes)) for m in msgs
            ]
            first._batches.apply(msgs, intakes, isolate=False, attempt=1)
            with pytest.raises(FencedOff, match="another worker moved it"):
                second._batches.apply(msgs, intakes, isolate=False, attempt=1)

    assert [v for (v,) in rows(dsn, "SELECT count(*) FROM audited_applies")] == [2]


async def test_a_new_term_gets_a_consumer_of_its_own_and_the_deposed_worker_pulls_nothing_from_it(
    dsn, nats_url, unique_name
):
    async with NatsBroker([nats_url]) as broker:
        prefix = await stream_for(broker, unique_name)
        await publish_stored(broker, dsn, prefix)
        with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
            old = worker(broker, pool, prefix, token=await take_lease(dsn, "old"))
            await old.start()
            new = worker(broker, pool, prefix, token=await take_lease(dsn, "new"))
            await new.start()

            names = {c.name for c in await broker.js.consumers_info(prefix.upper())}
            assert names == {new.durable}
            with pytest.raises(BrokerUnavailable):
                await old.process_once()
            while (await new.process_once()).received:
                pass

    assert audit(dsn) == []
