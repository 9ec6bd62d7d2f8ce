"""``eventplatform status`` names the worker that leads each projection."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from domain import CreateProduct, Products
from eventplatform.cli import main
from eventplatform.consumers import run_projection
from eventplatform.relay import run_relay
from eventplatform.store import create_schema, wait_for
from projections import ProductViewProjection
from tests.support.platform import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_status_shows_which_worker_leads_a_projection_and_forgets_it_on_a_clean_stop(
    database_dsn, nats_url, unique_name, monkeypatch, capsys
):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(settings.dsn, logs=["products"], projections=[ProductViewProjection()])
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop)),
        asyncio.create_task(
            run_projection(settings, ProductViewProjection(), stop, holder="worker-under-test")
        ),
    ]
    monkeypatch.setenv("APP_DSN", settings.dsn)
    try:
        app = Products(settings)
        position = app.create(CreateProduct(name="m", sku="M", price=Decimal(1))).position
        app.close()
        await asyncio.to_thread(
            wait_for, settings.dsn, projection="product_view", log="products", position=position
        )
        assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status"]) == 0
        assert "  worker: worker-under-test since " in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status", "--json"]) == 0
        [shown] = json.loads(capsys.readouterr().out)["projections"]
        assert (shown["projection"], shown["leader"]) == ("product_view", "worker-under-test")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
    assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["projections"][0]["leader"] is None
