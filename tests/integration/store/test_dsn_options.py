"""The DSN reaches every connection whole: TLS is never downgraded on any path.

eventsourcing builds its connections from five variables; ``sslmode=require`` used to be dropped
there, so psycopg's own connections refused a server without TLS while the write path wrote in
plaintext. Each path is tried: the write side (eventsourcing), the schema command (eventsourcing's
factory and psycopg), single connections (relay, status, wait, dlq, rebuild) and pools
(consumers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout

from domain import CreateProduct, Products
from eventplatform.cli.status import read_status
from eventplatform.errors import SchemaError, StoreUnavailable
from eventplatform.settings import load_settings
from eventplatform.store.postgres import connect, connect_async
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from eventplatform.testing.embedded import EmbeddedPostgres, find_postgres_bin
from tests.support.tls import make_certificates

pytestmark = pytest.mark.integration

#: eventsourcing's pool waits this long for a connection (its default is 30 s).
FAST_FAIL = {"POSTGRES_CONNECT_TIMEOUT": "3"}


def write_one_product(dsn: str) -> int:
    app = Products(load_settings({}, dsn=dsn), env=FAST_FAIL)
    try:
        return app.create(CreateProduct(name="Mug", sku="MUG-1", price=Decimal("9.50"))).position
    finally:
        app.close()


def open_single_connection(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("SELECT 1")


def open_async_connection(dsn: str) -> None:
    async def run() -> None:
        conn = await connect_async(dsn, "testing the DSN")
        await conn.close()

    asyncio.run(run())


def open_pool(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=3) as pool, pool.connection() as c:
        c.execute("SELECT 1")


PATHS: dict[str, Callable[[str], Any]] = {
    "eventsourcing write": write_one_product,
    "schema": lambda dsn: create_schema(dsn, logs=["products"]),
    "single connection": open_single_connection,
    "async connection": open_async_connection,
    "pool": open_pool,
    "status": lambda dsn: read_status(dsn, ["products"]),
    "wait": lambda dsn: wait_for(dsn, projection="p", log="products", position=0, timeout=1),
}


@pytest.fixture(scope="module")
def plain_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls) -> Iterator[EmbeddedPostgres]:
    bin_dir = find_postgres_bin(with_ssl=True)
    if bin_dir is None:
        pytest.skip("no PostgreSQL build with TLS on this machine (pgserver's has none)")
    with EmbeddedPostgres(bin_dir=bin_dir, tls=(tls.cert, tls.key)) as pg:
        yield pg


@pytest.mark.parametrize("path", sorted(PATHS))
def test_sslmode_require_against_a_server_without_tls_is_refused_on_every_path(plain_server, path):
    dsn = f"{plain_server.dsn}?sslmode=require&connect_timeout=3"
    if path == "pool":  # psycopg_pool reports only its timeout (and logs the reason)
        with pytest.raises(PoolTimeout):
            PATHS[path](dsn)
        return
    with pytest.raises((StoreUnavailable, SchemaError)) as excinfo:
        PATHS[path](dsn)
    assert "SSL was required" in str(excinfo.value)


def test_nothing_was_written_in_plaintext_when_tls_was_required(plain_server):
    with psycopg.connect(plain_server.dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'products_events'")
        assert tables.fetchone() == (0,)


def verified_dsn(server: EmbeddedPostgres, ca: Path, name: str) -> str:
    # verify-full needs sslrootcert (no ~/.postgresql/root.crt here): a path that dropped it
    # could not connect at all. application_name marks the sessions to check below.
    return (
        f"{server.dsn}?sslmode=verify-full&sslrootcert={ca}&application_name={name}"
        "&connect_timeout=3"
    )


def test_every_path_connects_to_a_tls_server_with_the_options_of_the_dsn(tls_server, tls):
    dsn = verified_dsn(tls_server, tls.ca, "tls_spec")
    create_schema(dsn, logs=["products"])
    for path in sorted(PATHS):
        PATHS[path](dsn)


def test_eventsourcings_own_connections_are_encrypted_and_carry_the_dsns_options(tls_server, tls):
    dsn = verified_dsn(tls_server, tls.ca, "es_spec")
    create_schema(dsn, logs=["products"])
    app = Products(load_settings({}, dsn=dsn), env=FAST_FAIL)
    try:
        app.create(CreateProduct(name="Mug", sku="MUG-2", price=Decimal("1.00")))
        with psycopg.connect(tls_server.dsn) as conn:  # a plain observer, not one of the app's
            rows = conn.execute(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.application_name = 'es_spec'"
            ).fetchall()
    finally:
        app.close()
    assert rows, "the application's pool holds connections named by the DSN"
    assert all(ssl for (ssl,) in rows)
