"""Rebuilding a projection from the event store: shadow, catch-up, verify, atomic swap."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from domain import ChangePrice, CreateProduct, Product, Products, RenameProduct
from eventplatform.consumers.projection import Projection
from eventplatform.errors import ConfigurationError
from eventplatform.rebuild import RebuildInterrupted, RebuildOptions, rebuild, shadow_table
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection
from tests.support.platform import running, settings_for
from tests.support.projections import ShoutingProductView, ShoutingProductViewV2, table_rows

pytestmark = pytest.mark.integration

PRODUCTS = RebuildOptions(log="products")


class EventCounts(Projection):
    """One row per applied event with how often it was applied: exactly-once means all 1."""

    name = "event_counts"
    default_table = "event_counts"
    aggregate_column = "aggregate"
    event_classes = (Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued)

    def __init__(self, *, table: str | None = None) -> None:
        super().__init__(table=table)
        self.replay_flags: set[bool] = set()

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (aggregate uuid, version int, times int NOT NULL,"
                " PRIMARY KEY (aggregate, version))"
            ).format(sql.Identifier(self.table))
        )

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        self.replay_flags.add(self.replaying)
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} AS t VALUES (%s, %s, 1) ON CONFLICT (aggregate, version)"
                " DO UPDATE SET times = t.times + 1"
            ).format(t=sql.Identifier(self.table)),
            (event.originator_id, event.originator_version),
        )


class SlowEventCounts(EventCounts):
    """The live instance: each batch sleeps before it writes, so that the handover usually
    finds a worker transaction in flight that must wait for the swap and then write into
    the new table."""

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Any) -> None:
        cur.execute("SELECT pg_sleep(0.05)")
        super().apply_batch(cur, events)


@pytest.fixture
def settings(database_dsn, nats_url, unique_name):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(
        database_dsn, logs=["products"], projections=[ProductViewProjection(), EventCounts()]
    )
    return settings


@pytest.fixture
def app(settings):
    app = Products(settings)
    yield app
    app.close()


def seed(app: Products, n: int) -> tuple[list[Any], int]:
    ids, last = [], 0
    for i in range(n):
        created = app.create(CreateProduct(name=f"p{i}", sku=f"S{i}", price=Decimal(i + 1)))
        ids.append(created.aggregate_id)
        last = app.rename(RenameProduct(product_id=created.aggregate_id, name=f"q{i}")).position
    return ids, last


def store_events(dsn: str) -> set[tuple[Any, int]]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT originator_id, originator_version FROM products_events")
        return {(r[0], int(r[1])) for r in found.fetchall()}


def live_position(dsn: str, projection: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT position FROM eventplatform_tracking WHERE projection = %s", (projection,)
        ).fetchone()
    return int(row[0]) if row else 0


def events_up_to(dsn: str, position: int) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM products_events WHERE notification_id <= %s", (position,)
        )
        return int(found.fetchone()[0])  # type: ignore[index]


def set_live_position(dsn: str, projection: str, position: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO eventplatform_tracking (projection, log, position)"
            " VALUES (%s, 'products', %s)",
            (projection, position),
        )


def table_exists(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None


async def project_until(settings, projection: Projection, position: int) -> None:
    async with running(settings, projection):
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection=projection.name,
            log="products",
            position=position,
            timeout=30,
        )


@pytest.mark.asyncio
async def test_a_rebuild_under_load_swaps_in_the_fold_of_the_store_and_readers_never_see_a_gap(
    settings, app
):
    ids, seeded = seed(app, 500)
    writes = threading.Semaphore(0)
    written: list[int] = []
    stop_writing = threading.Event()
    stop_reading = threading.Event()
    seen: list[int] = []

    def write() -> None:
        i = 0
        while not stop_writing.is_set():
            product = ids[i % len(ids)]
            done = app.change_price(ChangePrice(product_id=product, price=Decimal(1000 + i)))
            written.append(done.position)
            writes.release()
            i += 1

    def read() -> None:
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            while not stop_reading.is_set():
                row = conn.execute("SELECT count(*), min(times), max(times) FROM event_counts")
                count, low, high = row.fetchone()  # type: ignore[misc]
                seen.append(count)
                assert (low, high) in ((1, 1), (None, None)), "an event applied twice"

    live = SlowEventCounts()
    async with running(settings, live):
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="event_counts",
            log="products",
            position=live_position_of_head(settings.dsn),
            timeout=30,
        )
        reader = asyncio.create_task(asyncio.to_thread(read))
        writer = asyncio.create_task(asyncio.to_thread(write))
        for _ in range(20):  # the writers are under way before the rebuild starts
            await asyncio.to_thread(writes.acquire)
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="event_counts",
            log="products",
            position=written[19],
            timeout=30,
        )
        report = await asyncio.to_thread(
            rebuild,
            settings.dsn,
            EventCounts(),
            RebuildOptions(log="products", batch_size=50, handover_gap=5),
        )
        for _ in range(20):  # and still writing after the swap
            await asyncio.to_thread(writes.acquire)
        # Keep writing after the swap: the live worker continues into the new table.
        after_swap = app.rename(RenameProduct(product_id=ids[0], name="after")).position
        stop_writing.set()
        await writer
        head = live_position_of_head(settings.dsn)
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="event_counts",
            log="products",
            position=max(head, after_swap),
            timeout=30,
        )
        stop_reading.set()
        await reader

    assert report.swapped
    assert report.comparison is not None
    assert report.comparison.equal
    assert report.position > seeded + 20, "the handover happened while writers ran"
    assert report.events == events_up_to(settings.dsn, report.position)
    assert len(seen) > 10
    counts = table_rows(settings.dsn, "event_counts")
    assert {(r[0], r[1]) for r in counts} == store_events(settings.dsn)
    assert {r[2] for r in counts} == {1}
    assert min(seen) >= 1000, "a reader saw an empty or half-built read model"
    assert seen == sorted(seen), "a reader saw rows disappear"
    old = table_rows(settings.dsn, "event_counts__old")
    assert len(old) < len(counts), "the live worker went on writing into the new table"
    assert not table_exists(settings.dsn, "event_counts__rebuild")


def live_position_of_head(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM products_events")
        return int(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.asyncio
async def test_an_unchanged_projection_rebuilds_equal_and_swaps_with_replaying_set(settings, app):
    _, last = seed(app, 20)
    await project_until(settings, ProductViewProjection(), last)
    before = table_rows(settings.dsn, "product_view")
    replayed = EventCounts()
    create_schema(settings.dsn, projections=[replayed])

    report = rebuild(settings.dsn, ProductViewProjection(), PRODUCTS)

    assert report.swapped
    assert report.comparison is not None
    assert report.comparison.equal
    assert report.comparison.live_rows == report.comparison.shadow_rows == 20
    assert table_rows(settings.dsn, "product_view") == before
    assert report.position == last
    assert report.events == 40
    # A projection can ask whether it is replaying: the rebuild's copy is, the original is not.
    set_live_position(settings.dsn, "event_counts", last)
    counted = rebuild(settings.dsn, replayed, RebuildOptions(log="products", accept=True))
    assert counted.swapped
    assert counted.events == 40
    assert replayed.replay_flags == {True}
    assert replayed.replaying is False


@pytest.mark.asyncio
async def test_a_changed_projection_reports_the_differing_rows_and_swaps_nothing(settings, app):
    ids, last = seed(app, 30)
    await project_until(settings, ProductViewProjection(), last)
    before = table_rows(settings.dsn, "product_view")

    report = rebuild(
        settings.dsn, ShoutingProductView(), RebuildOptions(log="products", differences=5)
    )

    assert not report.swapped
    assert not report.ok
    assert report.comparison is not None
    assert report.comparison.differing_count == 30
    assert len(report.comparison.differing) == 5
    assert all("(changed)" in k and k.startswith("id=") for k in report.comparison.differing)
    assert any(str(i) in " ".join(report.comparison.differing) for i in ids)
    assert any("30 rows differ, UNEXPECTED" in line for line in report.lines())
    assert table_rows(settings.dsn, "product_view") == before
    # Accepting swaps the very shadow that was verified.
    accepted = rebuild(
        settings.dsn, ShoutingProductView(), RebuildOptions(log="products", accept=True)
    )
    assert accepted.swapped
    assert accepted.events == 0
    assert {r[1] for r in table_rows(settings.dsn, "product_view")} == {f"Q{i}" for i in range(30)}


@pytest.mark.asyncio
async def test_a_new_version_shows_its_differences_as_expected_and_serves_after_the_swap(
    settings, app
):
    from eventplatform.cli.status import read_status

    _, last = seed(app, 10)
    await project_until(settings, ProductViewProjection(), last)
    assert [p.version for p in read_status(settings.dsn, ["products"]).projections] == [1]

    verified = rebuild(
        settings.dsn, ShoutingProductViewV2(), RebuildOptions(log="products", verify_only=True)
    )
    assert verified.expected_differences
    assert verified.ok
    assert not verified.swapped
    report = rebuild(settings.dsn, ShoutingProductViewV2(), PRODUCTS)

    assert report.expected_differences
    assert report.swapped
    assert report.serving_version == 1
    assert any("expected (version changed)" in line for line in report.lines())
    assert [p.version for p in read_status(settings.dsn, ["products"]).projections] == [2]


@pytest.mark.asyncio
async def test_a_rebuild_killed_midway_leaves_live_untouched_and_the_rerun_finishes(settings, app):
    _, last = seed(app, 40)
    await project_until(settings, ProductViewProjection(), last)
    before = table_rows(settings.dsn, "product_view")

    class Crash(Exception):
        pass

    class CrashAfterTwoBatches:
        calls = 0

        def update(self, **_: Any) -> None:
            self.calls += 1
            if self.calls == 2:
                raise Crash

        def close(self) -> None:
            pass

    with pytest.raises(Crash):
        rebuild(
            settings.dsn,
            ProductViewProjection(),
            RebuildOptions(log="products", batch_size=10),
            progress=CrashAfterTwoBatches(),
        )
    assert table_rows(settings.dsn, "product_view") == before
    halfway = live_position(settings.dsn, "product_view#rebuild")
    assert 0 < halfway < last

    stop = threading.Event()
    stop.set()
    with pytest.raises(RebuildInterrupted):
        rebuild(settings.dsn, ProductViewProjection(), PRODUCTS, stop=stop)
    assert table_rows(settings.dsn, "product_view") == before

    report = rebuild(
        settings.dsn, ProductViewProjection(), RebuildOptions(log="products", batch_size=10)
    )
    assert report.swapped
    assert report.comparison is not None
    assert report.comparison.equal
    assert report.events == last - halfway
    assert any(f"resumed the shadow at position {halfway}" in n for n in report.notes)
    assert table_rows(settings.dsn, "product_view") == before


@pytest.mark.asyncio
async def test_one_aggregate_is_rebuilt_in_place_and_only_with_acceptance_when_it_differs(
    settings, app
):
    ids, last = seed(app, 5)
    await project_until(settings, ProductViewProjection(), last)
    before = table_rows(settings.dsn, "product_view")
    with psycopg.connect(settings.dsn) as conn:
        conn.execute("UPDATE product_view SET name = 'corrupt' WHERE id = %s", (ids[2],))
    options = RebuildOptions(log="products", aggregate=ids[2])

    checked = rebuild(
        settings.dsn,
        ShoutingProductView(),
        RebuildOptions(log="products", aggregate=ids[2], verify_only=True),
    )
    assert checked.comparison is not None
    assert checked.comparison.differing_count == 2
    assert not checked.swapped
    refused = rebuild(settings.dsn, ShoutingProductView(), options)
    assert not refused.swapped
    assert not refused.ok
    fixed = rebuild(
        settings.dsn,
        ShoutingProductView(),
        RebuildOptions(log="products", aggregate=ids[2], accept=True),
    )

    assert fixed.swapped
    assert fixed.events == 2
    after = table_rows(settings.dsn, "product_view")
    assert [r for r in after if r[0] != ids[2]] == [r for r in before if r[0] != ids[2]]
    assert next(r for r in after if r[0] == ids[2])[1] == "Q2"


def test_an_aggregate_rebuild_needs_an_aggregate_column(settings):
    class WithoutAggregateColumn(ProductViewProjection):
        aggregate_column = ""

    with pytest.raises(ConfigurationError, match="aggregate_column"):
        rebuild(
            settings.dsn,
            WithoutAggregateColumn(),
            RebuildOptions(log="products", aggregate=Product.create("a", "b", Decimal(1)).id),
        )


@pytest.mark.asyncio
async def test_the_samples_corrupted_row_is_repaired_from_the_store(settings, app):
    ids, last = seed(app, 3)
    await project_until(settings, ProductViewProjection(), last)
    before = table_rows(settings.dsn, "product_view")
    with psycopg.connect(settings.dsn) as conn:
        conn.execute("UPDATE product_view SET name = 'corrupt' WHERE id = %s", (ids[1],))

    report = rebuild(
        settings.dsn,
        ProductViewProjection(),
        RebuildOptions(log="products", aggregate=ids[1], accept=True),
    )

    assert report.swapped
    assert table_rows(settings.dsn, "product_view") == before


def test_a_rebuild_from_a_position_replays_only_later_events(settings, app):
    _, last = seed(app, 10)
    set_live_position(settings.dsn, "event_counts", last)
    report = rebuild(
        settings.dsn,
        EventCounts(),
        RebuildOptions(log="products", from_position=last - 4, verify_only=True),
    )
    assert report.events == 4
    assert not report.swapped
    assert report.comparison is not None
    assert report.comparison.shadow_rows == 4
    assert report.comparison.live_rows == 0
    assert report.comparison.differing_count == 4
    assert all(k.endswith("(only rebuilt)") for k in report.comparison.differing)


def test_rebuilding_a_projection_without_its_table_says_run_schema(settings):
    class Missing(EventCounts):
        name = "missing"
        default_table = "missing_table"

    with pytest.raises(Exception, match="run 'eventplatform schema'"):
        rebuild(settings.dsn, Missing(), PRODUCTS)
    assert shadow_table(Missing()) == "missing_table__rebuild"


def test_a_topic_filter_reads_only_those_topics(settings, app):
    from eventsourcing.utils import get_topic

    _, last = seed(app, 6)
    set_live_position(settings.dsn, "event_counts", last)
    only_created = RebuildOptions(
        log="products", topics=[get_topic(Product.Created)], verify_only=True
    )

    report = rebuild(settings.dsn, EventCounts(), only_created)

    assert report.events == 6
    assert report.position == last
    assert report.comparison is not None
    assert report.comparison.shadow_rows == 6
    assert set(table_rows(settings.dsn, "event_counts__rebuild")) == {
        (aggregate, 1, 1) for aggregate, version in store_events(settings.dsn) if version == 1
    }


@pytest.mark.asyncio
async def test_a_worker_newer_than_the_serving_version_tells_the_operator_to_rebuild(
    settings, app, caplog
):
    _, last = seed(app, 2)
    await project_until(settings, ProductViewProjection(), last)  # records version 1
    caplog.set_level("WARNING", logger="eventplatform.consumers.versions")

    newer = app.rename(RenameProduct(product_id=app_products(settings)[0], name="z")).position
    await project_until(settings, ShoutingProductViewV2(), newer)

    warnings = [
        r.getMessage() for r in caplog.records if r.name == "eventplatform.consumers.versions"
    ]
    assert any(
        "is version 2 but its read model was built by version 1" in w
        and "eventplatform rebuild" in w
        for w in warnings
    )


def app_products(settings) -> list[Any]:
    with psycopg.connect(settings.dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM product_view ORDER BY name")]


def test_a_second_rebuild_of_the_same_projection_is_refused_while_one_runs(settings):
    from eventplatform.rebuild import RebuildError

    with psycopg.connect(settings.dsn, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended('eventplatform.rebuild:event_counts', 0))"
        )
        with pytest.raises(RebuildError, match="another rebuild of 'event_counts' is running"):
            rebuild(settings.dsn, EventCounts(), PRODUCTS)
    assert rebuild(settings.dsn, EventCounts(), PRODUCTS).comparison is not None


def test_the_bare_replay_fills_a_table_with_every_event_once_and_resumes(settings, app):
    from eventplatform.rebuild.replay import replay_log

    _, last = seed(app, 25)
    target = EventCounts(table="counted_by_replay")
    with psycopg.connect(settings.dsn) as conn, conn.cursor() as cur:
        target.create_tables(cur)

    assert replay_log(settings.dsn, target, log="products", upto=20, batch_size=7) == (20, 20)
    assert replay_log(settings.dsn, target, log="products", batch_size=7) == (last, last - 20)

    counted = table_rows(settings.dsn, "counted_by_replay")
    assert {(r[0], r[1]) for r in counted} == store_events(settings.dsn)
    assert {r[2] for r in counted} == {1}
