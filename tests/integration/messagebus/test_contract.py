"""The wire contract, read by clients nobody here wrote, from a real stream (issue 12).

A real service writes events (some of them stored in the tagged form eventsourcing wrote
before the plain layout), the real relay publishes them to JetStream, and a projection
consumes them. Then every message of the stream is read by the official CloudEvents SDKs,
for Python and for Node.js, and its ``data`` validated against the exported JSON Schema its
``dataschema`` names.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import psycopg
import pytest
import pytest_asyncio
from cloudevents.core.formats.json import JSONFormat
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from psycopg_pool import ConnectionPool

import domain
from domain import ChangePrice, CreateProduct, DiscontinueProduct, Product, Products, RenameProduct
from eventplatform.messagebus.schemas import event_classes_in, export
from eventplatform.settings import Settings
from eventplatform.store.mapper import tagged_transcoder
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection, ProductViews
from tests.support.platform import running, settings_for, stream_messages

pytestmark = pytest.mark.integration

NODE_CONSUMER = Path(__file__).parents[2] / "contract" / "node"
INT32_MAX = 2**31 - 1


@dataclass
class RealStream:
    settings: Settings
    schemas: Path
    messages: list[bytes]
    legacy: Any  # the aggregate whose events were stored in the tagged form


def store_tagged(app: Products, product: Product) -> None:
    """Stores a product's pending events as eventsourcing's default mapper did before."""
    transcoder = tagged_transcoder()
    app.recorder.insert_events(
        [
            StoredEvent(
                e.originator_id,
                e.originator_version,
                get_topic(type(e)),
                transcoder.encode(
                    {k: v for k, v in vars(e).items() if not k.startswith("originator_")}
                    | ({"originator_topic": "Product"} if isinstance(e, Product.Created) else {})
                ),
            )
            for e in product.collect_events()
        ]
    )


@pytest_asyncio.fixture
async def real_stream(database_dsn, nats_url, unique_name, tmp_path) -> RealStream:
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    app = Products(settings)
    try:
        old = Product.create("Teapot", "TEA-1", Decimal("25.00"))
        old.change_price(Decimal("1E+1"))
        store_tagged(app, old)
        for n in range(3):
            made = app.create(CreateProduct(name=f"Mug {n}", sku=f"MUG-{n}", price=Decimal("9.50")))
            app.rename(RenameProduct(product_id=made.aggregate_id, name=f"Big mug {n}"))
            app.change_price(ChangePrice(product_id=made.aggregate_id, price=Decimal("12")))
        last = app.discontinue(DiscontinueProduct(product_id=made.aggregate_id))
        assert app.get(old.id).price == Decimal("10")  # the tagged events load
    finally:
        app.close()
    async with running(settings, ProductViewProjection()):
        await asyncio.to_thread(
            wait_for, database_dsn, projection="product_view", log="products",
            position=last.position, timeout=20,
        )  # fmt: skip
    messages = [m.data for m in await stream_messages(nats_url, settings.stream)]
    assert len(messages) == last.position == 12
    schemas = tmp_path / "schemas"
    export(event_classes_in(domain), schemas)
    return RealStream(settings, schemas, messages, old)


def schema_store(directory: Path) -> dict[str, dict[str, Any]]:
    schemas = [json.loads(p.read_text()) for p in directory.glob("*.schema.json")]
    return {s["$id"]: s for s in schemas}


@pytest.mark.asyncio
async def test_events_stored_tagged_are_published_plain_verified_genuine_and_applied(real_stream):
    dsn = real_stream.settings.require_dsn()
    with psycopg.connect(dsn) as conn:
        letters = conn.execute("SELECT error FROM eventplatform_dead_letters").fetchall()
        stored = conn.execute(
            "SELECT state FROM products_events ORDER BY notification_id"
        ).fetchall()
    assert letters == []
    assert b'"_type_"' in bytes(stored[0][0])  # the store keeps the old form ...
    old_created, old_priced = (orjson.loads(m) for m in real_stream.messages[:2])
    assert old_created["data"] == {  # ... the wire carries the new one
        "originator_topic": "Product",
        "name": "Teapot",
        "sku": "TEA-1",
        "price": "25.00",
    }
    assert old_priced["data"] == {"price": "1E+1"}
    assert old_created["time"].endswith("Z")
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        view = ProductViews(pool).get(real_stream.legacy.id)
    assert view is not None
    assert (view.name, view.price, view.version) == ("Teapot", Decimal("10"), 2)


@pytest.mark.asyncio
async def test_the_python_cloudevents_sdk_reads_every_message_and_data_fits_its_schema(
    real_stream,
):
    schemas = schema_store(real_stream.schemas)
    read = JSONFormat()
    sequences = []
    for body in real_stream.messages:
        event = read.read(None, body)  # the SDK's validating reader: raises on a bad event
        attributes = event.get_attributes()
        assert attributes["specversion"] == "1.0"
        assert ":" not in event.get_type()  # a pinned topic, not a module path
        time = event.get_time()
        assert isinstance(time, datetime)
        assert time.tzinfo is not None
        sequence = event.get_extension("sequence")
        version = event.get_extension("aggregateversion")
        assert isinstance(sequence, str)
        assert re.fullmatch(r"[0-9]{19}", sequence)
        assert type(version) is int
        assert 1 <= version <= INT32_MAX  # a CloudEvents Integer is 32-bit
        sequences.append(sequence)
        data = event.get_data()
        assert isinstance(data, dict)
        assert "timestamp" not in data  # time is said once, as `time`
        assert b'"_type_"' not in body  # no transcoder tags
        schema = schemas[str(event.get_dataschema())]  # it names an exported schema
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(data)
    assert sequences == sorted(sequences)  # lexicographic order is log order
    assert [int(s) for s in sequences] == list(range(1, len(sequences) + 1))


def node_consumer_ready() -> str | None:
    """Why the Node.js spec cannot run here, or None when it can (installs its packages)."""
    if not (shutil.which("node") and shutil.which("npm")):
        return (
            "node and npm are not installed: the Node.js contract spec needs them "
            "(e.g. apt-get install nodejs npm); the Python SDK spec still runs"
        )
    if not (NODE_CONSUMER / "node_modules").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_CONSUMER,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"npm ci failed in {NODE_CONSUMER} (no npm registry?): {' | '.join(tail)}"
    return None


@pytest.mark.asyncio
async def test_a_node_consumer_with_the_cloudevents_sdk_reads_every_message_and_data_fits_its_schema(  # noqa: E501
    real_stream, nats_url
):
    reason = await asyncio.to_thread(node_consumer_ready)
    if reason:
        pytest.skip(reason)
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "consume.mjs"],
        cwd=NODE_CONSUMER,
        env={
            **os.environ,
            "NATS_URL": nats_url,
            "STREAM": real_stream.settings.stream,
            "SCHEMAS": str(real_stream.schemas),
            "EXPECTED": str(len(real_stream.messages)),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["errors"] == []
    assert report["checked"] == len(real_stream.messages)
    assert report["types"] == {
        "Product.Created": 4,
        "Product.Renamed": 3,
        "Product.PriceChanged": 4,
        "Product.Discontinued": 1,
    }


def test_without_node_the_node_spec_is_skipped_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = node_consumer_ready()
    assert reason is not None
    assert "node and npm are not installed" in reason
