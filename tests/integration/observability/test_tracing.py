"""One trace from a command to the projection's apply: through the store, the relay and NATS.

The command's process, the relay and the projection worker share nothing but PostgreSQL and
NATS: the trace context can only travel in the stored ``traceparent`` and the message. The
first spec runs the relay and the worker as tasks beside the command (one SDK, the in-memory
exporter); the second as real processes that export their spans with the SDK's console
exporter.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry import trace

from domain import CreateProduct, Products
from eventplatform.observability.tracing import format_traceparent
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection
from tests.support.platform import running, settings_for
from tests.support.processes import ROOT, wait_until
from tests.support.tracing import by_name, recorded_spans

pytestmark = pytest.mark.integration


async def eventually(condition, *, timeout: float, what: str):
    """Awaits ``condition`` without blocking the loop the relay and worker run on."""
    async with asyncio.timeout(timeout):
        while not (found := condition()):  # noqa: ASYNC110 (an exporter announces nothing)
            await asyncio.sleep(0.02)
    assert found, what
    return found


def create(settings) -> int:
    app = Products(settings)
    try:
        return app.create(CreateProduct(name="Mug", sku="MUG-1", price=Decimal("9.50"))).position
    finally:
        app.close()


def stored_traceparent(dsn: str, position: int) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT traceparent FROM products_events WHERE notification_id = %s", (position,)
        ).fetchone()
    return None if row is None else row[0]


@pytest.mark.asyncio
async def test_one_trace_runs_from_the_command_to_the_projections_apply(
    database_dsn, nats_url, unique_name
):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    with recorded_spans() as exporter:
        async with running(settings, ProductViewProjection()):
            with trace.get_tracer("shop").start_as_current_span("POST /products"):
                position = await asyncio.to_thread(create, settings)
            await asyncio.to_thread(
                wait_for, database_dsn, projection="product_view", log="products", position=position
            )
            process = await eventually(
                lambda: by_name(exporter.get_finished_spans(), "process product_view"),
                timeout=10,
                what="the process span",
            )
        spans = exporter.get_finished_spans()
    (command,) = by_name(spans, "POST /products")
    (save,) = by_name(spans, "save products")
    (publish,) = by_name(spans, "publish ")
    (process,) = process
    trace_id = command.context.trace_id
    assert {s.context.trace_id for s in (save, publish, process)} == {trace_id}
    assert save.parent is not None
    assert save.parent.span_id == command.context.span_id
    assert publish.parent is not None
    assert publish.parent.span_id == save.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert publish.name == f"publish {unique_name}.Product.Created"
    assert publish.kind is trace.SpanKind.PRODUCER
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["eventplatform.position"] == position
    assert stored_traceparent(database_dsn, position) == format_traceparent(save.context)


@pytest.mark.asyncio
async def test_without_a_trace_nothing_is_stored(database_dsn, nats_url, unique_name):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    position = await asyncio.to_thread(create, settings)
    assert stored_traceparent(database_dsn, position) is None


def console_spans(path: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (pretty JSON objects, one after another)."""
    text, at = path.read_text(), 0
    spans: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    while True:
        start = text.find("{", at)
        if start < 0:
            return spans
        span, at = decoder.raw_decode(text, start)
        spans.append(span)


@pytest.mark.e2e
def test_the_trace_crosses_real_relay_and_worker_processes(
    database_dsn, nats_url, unique_name, tmp_path
):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "APP_DSN": settings.dsn,
        "APP_LOG": "products",
        "APP_NATS_URL": nats_url,
        "APP_STREAM": settings.stream,
        "APP_SUBJECT_PREFIX": settings.subject_prefix,
        "APP_RELAY_POLL_INTERVAL": "0.2",
        "APP_PROJECTION_FETCH_TIMEOUT": "0.2",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    outputs = {name: tmp_path / f"{name}.json" for name in ("relay", "project")}
    procs = []
    for name, args in (("relay", []), ("project", ["projections:ProductViewProjection"])):
        with outputs[name].open("wb") as out, (tmp_path / f"{name}.log").open("wb") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "eventplatform", name, *args],
                    env=env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=err,
                )
            )
    try:
        with recorded_spans() as exporter:
            with trace.get_tracer("shop").start_as_current_span("POST /products"):
                position = create(settings)
            wait_for(
                database_dsn,
                projection="product_view",
                log="products",
                position=position,
                timeout=30,
            )
            (save,) = by_name(exporter.get_finished_spans(), "save products")
        process = wait_until(
            lambda: [
                s for s in console_spans(outputs["project"]) if s["name"] == "process product_view"
            ],
            timeout=15,
            what="the worker process exporting its span",
        )
        publish = wait_until(
            lambda: [
                s for s in console_spans(outputs["relay"]) if str(s["name"]).startswith("publish")
            ],
            timeout=15,
            what="the relay process exporting its span",
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    trace_id = f"0x{save.context.trace_id:032x}"
    (publish_span,) = publish
    (process_span,) = process
    assert publish_span["context"]["trace_id"] == trace_id
    assert process_span["context"]["trace_id"] == trace_id
    assert publish_span["parent_id"] == f"0x{save.context.span_id:016x}"
    assert process_span["parent_id"] == publish_span["context"]["span_id"]
