"""``eventplatform rebuild``: exit statuses, the report, and Ctrl-C leaving live untouched."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from domain import CreateProduct, Products, RenameProduct
from eventplatform.cli.main import main
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection
from tests.support.platform import running, settings_for
from tests.support.projections import ShoutingProductView, table_rows

pytestmark = pytest.mark.integration

__all__ = ["ShoutingProductView", "SlowProductView"]


class SlowProductView(ProductViewProjection):
    """The sample projection, slowed down so that a rebuild can be interrupted midway."""

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Any) -> None:
        cur.execute("SELECT pg_sleep(0.1)")
        super().apply_batch(cur, events)


@pytest.fixture
def settings(database_dsn, nats_url, unique_name, monkeypatch):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    monkeypatch.setenv("APP_DSN", database_dsn)
    monkeypatch.setenv("APP_LOG", "products")
    return settings


@pytest.fixture
def last(settings):
    app = Products(settings)
    try:
        for i in range(30):
            created = app.create(CreateProduct(name=f"p{i}", sku=f"S{i}", price=Decimal(1)))
            position = app.rename(RenameProduct(product_id=created.aggregate_id, name=f"q{i}"))
    finally:
        app.close()
    asyncio.run(project(settings, position.position))
    return position.position


async def project(settings, position: int) -> None:
    async with running(settings, ProductViewProjection()):
        await asyncio.to_thread(
            wait_for,
            settings.dsn,
            projection="product_view",
            log="products",
            position=position,
            timeout=30,
        )


def test_verify_only_of_an_unchanged_projection_exits_0_and_says_equal(settings, last, capsys):
    assert main(["rebuild", "projections:ProductViewProjection", "--verify-only"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt read model equals the live one" in out
    assert f"compared at position {last}" in out
    assert "not swapped" in out


def test_a_changed_projection_exits_1_listing_rows_and_keeps_live(settings, last, capsys):
    before = table_rows(settings.dsn, "product_view")
    assert main(["rebuild", "tests.integration.cli.test_rebuild:ShoutingProductView"]) == 1
    out = capsys.readouterr().out
    assert "30 rows differ, UNEXPECTED" in out
    assert "id=" in out
    assert "not swapped: product_view keeps serving" in out
    assert table_rows(settings.dsn, "product_view") == before
    reference = "tests.integration.cli.test_rebuild:ShoutingProductView"
    assert main(["rebuild", reference, "--accept"]) == 0
    assert "swapped: product_view__rebuild now serves as product_view" in capsys.readouterr().out
    assert table_rows(settings.dsn, "product_view") != before


def shadow_position(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT position FROM eventplatform_tracking WHERE projection = 'product_view#rebuild'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_ctrl_c_exits_130_with_live_untouched_and_the_rerun_finishes(settings, last, capsys):
    before = table_rows(settings.dsn, "product_view")
    reference = "tests.integration.cli.test_rebuild:SlowProductView"
    process = subprocess.Popen(
        [sys.executable, "-m", "eventplatform", "rebuild", reference, "--batch-size", "5"],
        env={**os.environ, "APP_DSN": settings.dsn, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while shadow_position(settings.dsn) == 0:  # polls the database: no event to wait on
            assert time.monotonic() < deadline, "the rebuild never committed a batch"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "live read model is untouched" in err
    assert table_rows(settings.dsn, "product_view") == before
    halfway = shadow_position(settings.dsn)
    assert 0 < halfway < last

    assert main(["rebuild", reference]) == 0
    out = capsys.readouterr().out
    assert f"resumed the shadow at position {halfway}" in out
    assert "rebuilt read model equals the live one" in out
    assert table_rows(settings.dsn, "product_view") == before
