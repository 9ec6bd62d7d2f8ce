"""The write path when the connection breaks: never a silent loss, never a double write.

There is no pre-ping: a broken connection is found by the write itself. If it broke before the
group was sent, the group is sent again; if after, the outcome is read back from PostgreSQL
before anyone is told anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg.conninfo import conninfo_to_dict

from domain import ChangePrice, CreateProduct, Products, RenameProduct
from eventplatform.errors import CommitOutcomeUnknown, StoreError, StoreUnavailable
from eventplatform.settings import load_settings
from eventplatform.store.appender import PostgresEventAppender
from eventplatform.store.postgres import connector
from eventplatform.store.schema import create_schema
from tests.support.proxy import CuttingProxy

pytestmark = pytest.mark.integration

GROUP_MESSAGE = b"IN EXCLUSIVE MODE"  # what only the appender's group transaction sends


@pytest.fixture
def dsn(database_dsn: str) -> str:
    create_schema(database_dsn, logs=["products"])
    return database_dsn


@pytest.fixture
def proxy(dsn: str) -> Iterator[CuttingProxy]:
    params = conninfo_to_dict(dsn)
    with CuttingProxy(str(params["host"]), int(str(params["port"]))) as proxy:
        yield proxy


@pytest.fixture
def appender(dsn: str, proxy: CuttingProxy) -> Iterator[PostgresEventAppender]:
    appender = PostgresEventAppender(
        connector(proxy.dsn(conninfo_to_dict(dsn))),
        table=("public", "products_events"),
        channel="products_events",
        retry_for=1.0,
    )
    yield appender
    appender.close()


def command(events: int = 1) -> list[StoredEvent]:
    aggregate = uuid4()
    return [
        StoredEvent(aggregate, version, "Product.Renamed", f'{{"v": {version}}}'.encode())
        for version in range(1, events + 1)
    ]


def stored(dsn: str) -> dict[tuple[Any, int], int]:
    """(aggregate, version) -> notification id, straight from the server (no proxy)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, notification_id FROM products_events"
        ).fetchall()
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


def ids_of(commands: list[list[StoredEvent]], table: dict[tuple[Any, int], int]) -> list[Any]:
    return [[table[(e.originator_id, e.originator_version)] for e in c] for c in commands]


def test_a_group_whose_answer_is_lost_after_it_committed_is_reported_stored_with_its_ids(
    appender, proxy, dsn
):
    commands = [command(2), command(1), command(3)]
    proxy.arm(GROUP_MESSAGE, lose="response")

    outcomes = appender.write(commands)

    assert proxy.cut.is_set()
    table = stored(dsn)
    assert len(table) == 6  # stored once, not sent again
    assert outcomes == ids_of(commands, table)


def test_a_group_lost_on_its_way_to_the_server_is_sent_again_and_stored_once(appender, proxy, dsn):
    commands = [command(1), command(2)]
    proxy.arm(GROUP_MESSAGE, lose="request")

    outcomes = appender.write(commands)

    assert proxy.cut.is_set()
    table = stored(dsn)
    assert len(table) == 3
    assert outcomes == ids_of(commands, table)


def test_a_commit_lost_with_the_server_out_of_reach_after_is_reported_unknown_not_unavailable(
    appender, proxy, dsn
):
    commands = [command(1), command(1)]
    proxy.arm(GROUP_MESSAGE, lose="response", then_refuse=True)

    outcomes = appender.write(commands)

    assert all(isinstance(o, CommitOutcomeUnknown) for o in outcomes), outcomes
    assert len(stored(dsn)) == 2  # it had committed: "unknown" was the honest answer


def test_a_server_out_of_reach_before_anything_was_sent_fails_the_commands_as_unavailable(
    appender, proxy, dsn
):
    proxy.refuse = True

    outcomes = appender.write([command(1), command(1)])

    assert all(type(o) is StoreUnavailable for o in outcomes), outcomes
    assert stored(dsn) == {}
    proxy.refuse = False
    assert isinstance(appender.write([command(1)])[0], list)  # and it recovers


def test_events_postgres_refuses_fail_only_their_own_command(appender, dsn):
    # text cannot hold NUL: a data error, not a conflict and not an outage
    bad = [StoredEvent(uuid4(), 1, "nul \x00 in a topic", b"{}")]
    good = [command(1), command(2)]

    outcomes = appender.write([good[0], bad, good[1]])

    assert isinstance(outcomes[1], StoreError)
    table = stored(dsn)
    assert len(table) == 3
    assert [outcomes[0], outcomes[2]] == ids_of(good, table)


def test_commands_after_a_postgres_restart_succeed_without_a_pre_ping(embedded_postgres):
    create_schema(embedded_postgres.dsn, logs=["products"])
    settings = load_settings({}, dsn=embedded_postgres.dsn, log="products", pool_size=2)
    app = Products(settings)
    try:
        created = app.create(CreateProduct(name="before", sku="B-1", price=Decimal("1.00")))
        app.rename(RenameProduct(product_id=created.aggregate_id, name="still before"))

        embedded_postgres.restart()  # every pooled connection, and the write one, is now dead

        renamed = app.rename(RenameProduct(product_id=created.aggregate_id, name="after"))
        repriced = app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal(2)))
        other = app.create(CreateProduct(name="new", sku="N-1", price=Decimal("1.00")))
    finally:
        app.close()

    table = stored(embedded_postgres.dsn)
    assert sorted(table) == sorted(
        [(created.aggregate_id, v) for v in (1, 2, 3, 4)] + [(other.aggregate_id, 1)]
    )
    assert renamed.position == table[(created.aggregate_id, 3)]
    assert repriced.position == table[(created.aggregate_id, 4)]
