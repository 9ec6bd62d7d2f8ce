"""Partitioned projections: the broker routes, workers share partitions on their own, and every
aggregate's events still apply exactly once, in order (issue 14)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest

from domain import ChangePrice, CreateProduct, Products
from eventplatform.consumers import run_projection
from eventplatform.errors import ConfigurationError
from eventplatform.partitions import partition_of
from eventplatform.relay import run_relay
from eventplatform.store import create_schema, wait_for
from tests.support.audit import AuditedProjection, audit
from tests.support.platform import settings_for, stream_messages
from tests.support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

PARTITIONS = 4


@pytest.fixture
def settings(database_dsn, nats_url, unique_name):
    create_schema(database_dsn, logs=["products"], projections=[AuditedProjection()])
    return settings_for(
        database_dsn,
        nats_url,
        unique_name,
        partitions=PARTITIONS,
        projection_lease_ttl=1.0,
        pool_size=4,
    )


def write(settings: Any, products: int, changes: int = 3) -> int:
    """Creates products and changes their prices; returns the last position."""
    app = Products(settings)
    try:
        last = 0
        for n in range(products):
            created = app.create(CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(1)))
            last = created.position
            for price in range(2, 2 + changes):
                result = app.change_price(
                    ChangePrice(product_id=created.aggregate_id, price=Decimal(price))
                )
                last = result.position
        return last
    finally:
        app.close()


def held(dsn: str) -> Counter[str]:
    """How many partitions of the audited projection each worker holds."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT holder FROM eventplatform_leases WHERE name LIKE 'projection:audited#%'"
            " AND expires_at > now()"
        ).fetchall()
    return Counter(r[0] for r in rows)


async def until(condition: Any, timeout: float = 20) -> None:
    """Polls the lease table: other tasks change it, there is no event to await."""
    await asyncio.to_thread(wait_until, condition, timeout=timeout, what="the partitions' holders")


def relayed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT position FROM eventplatform_relay_positions").fetchone()
    return int(row[0]) if row else 0


async def test_the_relay_puts_each_aggregate_in_the_subject_of_its_partition(settings):
    last = write(settings, 12, changes=1)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop))
    try:
        await until(lambda: relayed(settings.dsn) >= last)
    finally:
        stop.set()
        await relay
    messages = await stream_messages(settings.nats_url, settings.stream)
    prefix = settings.subject_prefix
    for m in messages:
        aggregate = orjson.loads(m.data)["subject"]
        k = partition_of(aggregate, PARTITIONS)
        assert m.subject.startswith(f"{prefix}.{k}.Product."), m.subject
    assert len({m.subject.split(".")[1] for m in messages}) > 1


async def test_workers_share_the_partitions_and_every_aggregate_applies_once_in_order(settings):
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        *(
            asyncio.create_task(run_projection(settings, AuditedProjection(), stop, holder=h))
            for h in ("worker-a", "worker-b")
        ),
    ]
    try:
        last = await asyncio.to_thread(write, settings, 30)
        await asyncio.to_thread(
            wait_for, settings.dsn, projection="audited", log="products", position=last, timeout=30
        )
        await until(lambda: held(settings.dsn) == Counter({"worker-a": 2, "worker-b": 2}))
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert audit(settings.dsn) == []
    with psycopg.connect(settings.dsn) as conn:
        keys = {r[0] for r in conn.execute("SELECT projection FROM eventplatform_tracking")}
    assert keys <= {f"audited#{k}/{PARTITIONS}" for k in range(PARTITIONS)}
    assert len(keys) > 1


async def test_a_worker_that_joins_gets_its_share_and_one_that_leaves_is_taken_over(settings):
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop))
    first = asyncio.create_task(run_projection(settings, AuditedProjection(), stop, holder="a"))
    writing = threading.Event()
    total = {"last": 0}

    def load() -> None:
        while not writing.is_set():
            total["last"] = write(settings, 2, changes=2)

    writer = asyncio.create_task(asyncio.to_thread(load))
    second_stop = asyncio.Event()
    try:
        await until(lambda: held(settings.dsn) == Counter({"a": PARTITIONS}))
        second = asyncio.create_task(
            run_projection(settings, AuditedProjection(), second_stop, holder="b")
        )
        await until(lambda: held(settings.dsn) == Counter({"a": 2, "b": 2}))
        second_stop.set()  # b leaves: its partitions are released and a takes them back
        await asyncio.wait_for(second, timeout=20)
        await until(lambda: held(settings.dsn) == Counter({"a": PARTITIONS}))
        writing.set()
        await writer
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="audited",
            log="products",
            position=total["last"],
            timeout=30,
        )
    finally:
        writing.set()
        stop.set()
        second_stop.set()
        await asyncio.wait_for(asyncio.gather(relay, first, return_exceptions=True), timeout=30)
    assert audit(settings.dsn) == []


async def test_a_projection_refuses_to_run_in_another_number_of_partitions_once_it_applied(
    settings,
):
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        asyncio.create_task(run_projection(settings, AuditedProjection(), stop)),
    ]
    try:
        last = await asyncio.to_thread(write, settings, 3)
        await asyncio.to_thread(
            wait_for, settings.dsn, projection="audited", log="products", position=last, timeout=30
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    other = settings.model_copy(update={"partitions": 8})
    with pytest.raises(ConfigurationError, match="keeps its positions in 4 partition"):
        await asyncio.wait_for(run_projection(other, AuditedProjection(), asyncio.Event()), 20)


async def test_a_partitioned_projection_rebuilds_equal_under_load_and_the_workers_go_on(settings):
    from eventplatform.rebuild import RebuildOptions, rebuild
    from projections import ProductViewProjection
    from tests.support.projections import ShoutingProductView

    create_schema(settings.dsn, projections=[ProductViewProjection()])
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        *(
            asyncio.create_task(run_projection(settings, ProductViewProjection(), stop, holder=h))
            for h in ("a", "b")
        ),
    ]
    writing = threading.Event()

    def load() -> int:
        last = 0
        while not writing.is_set():
            last = write(settings, 2, changes=2)
        return last

    writer = asyncio.create_task(asyncio.to_thread(load))
    try:
        last = await asyncio.to_thread(write, settings, 10)
        await asyncio.to_thread(
            wait_for, settings.dsn, projection="product_view", log="products", position=last
        )
        options = RebuildOptions(log="products", batch_size=7, handover_gap=0)
        report = await asyncio.to_thread(rebuild, settings.dsn, ProductViewProjection(), options)
        assert report.comparison is not None
        assert report.comparison.equal, report.lines()
        assert report.swapped
        differing = await asyncio.to_thread(
            rebuild,
            settings.dsn,
            ShoutingProductView(),
            RebuildOptions(log="products", verify_only=True, restart=True),
        )
        assert differing.comparison is not None
        assert not differing.comparison.equal
        writing.set()
        last = await writer
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="product_view",
            log="products",
            position=last,
            timeout=30,
        )
        again = await asyncio.to_thread(
            rebuild,
            settings.dsn,
            ProductViewProjection(),
            RebuildOptions(log="products", verify_only=True, restart=True),
        )
        assert again.comparison is not None
        assert again.comparison.equal, again.lines()
    finally:
        writing.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)


async def test_each_partition_reports_its_applied_events_position_and_lag_of_its_own(settings):
    from prometheus_client import generate_latest

    from eventplatform.observability import Observability

    observed = Observability(interval=0.2)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        asyncio.create_task(
            run_projection(settings, AuditedProjection(), stop, observability=observed)
        ),
    ]
    try:
        last = await asyncio.to_thread(write, settings, 20)
        await asyncio.to_thread(
            wait_for, settings.dsn, projection="audited", log="products", position=last, timeout=30
        )
        await asyncio.sleep(1.0)  # two periodic looks (interval 0.2 s) after catching up
        text = generate_latest(observed.registry).decode()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    def samples(metric: str) -> dict[str, float]:
        found = {}
        for line in text.splitlines():
            if line.startswith(metric + "{"):
                labels, _, number = line.rpartition(" ")
                partition = labels.split('partition="')[1].split('"')[0]
                found[partition] = found.get(partition, 0.0) + float(number)
        return found

    applied = samples("eventplatform_projection_applied_events_total")
    assert applied.pop("", 0) == 0  # the process's own series: it only shares partitions
    assert set(applied) == {str(k) for k in range(PARTITIONS)}
    assert sum(applied.values()) == 80
    lags = samples("eventplatform_projection_lag_events")
    assert lags == {str(k): 0.0 for k in range(PARTITIONS)}
    assert len(samples("eventplatform_projection_position")) == PARTITIONS
