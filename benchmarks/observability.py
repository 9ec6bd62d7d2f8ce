"""``observability``: the relay and a projection with metrics and tracing on, beside both off.

Same backlog, same run, interleaved rounds (off, on, on, off, ...): the relay publishes it
twice into two streams, a projection applies it twice into two read models. "On" means
Prometheus instruments on a registry, and the OpenTelemetry SDK installed (a batch span
processor and an exporter that drops the spans, so the figure is the platform's cost, not an
exporter's) with every event carrying a stored ``traceparent`` of which ``SAMPLED`` are
sampled: those get a publish span and a process span. "Off" is the default: null instruments,
no SDK. The figure also times what tracing costs per save and per message with no SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import timeit
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import ConnectionPool

from benchmarks.harness import (
    Result,
    Scale,
    Stopwatch,
    copy_backlog,
    fresh_database,
    relay_backlog,
    settings_for,
    template_rows,
    throughput,
    unique,
)
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus.nats_broker import NatsBroker, StreamSpec
from eventplatform.observability import tracing
from eventplatform.observability.metrics import (
    NO_RELAY_INSTRUMENTS,
    PrometheusConsumerMetrics,
    PrometheusRelayMetrics,
)
from eventplatform.relay.event_log import PostgresEventLog
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.relay import Relay, RelayConfig
from eventplatform.relay.routing import DefaultTopicMapper
from eventplatform.store.schema import events_table
from projections import ProductViewProjection

#: The fraction of events whose trace is sampled (head sampling at the command); the
#: environment variable BENCH_TRACE_SAMPLED overrides it.
SAMPLED = float(os.environ.get("BENCH_TRACE_SAMPLED", "0.01"))


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Sdk:
    """Installs the SDK for the 'on' sections only (the global provider swapped)."""

    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(_Dropping()))

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        saved = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = self.provider
        try:
            yield
        finally:
            trace._TRACER_PROVIDER = saved


def _trace_backlog(dsn: str, sampled: float) -> None:
    """Gives every stored event a traceparent, ``sampled`` of them with the sampled flag."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET traceparent = '00-' || md5(random()::text) || '-'"
                " || substr(md5(random()::text), 1, 16) || '-'"
                " || CASE WHEN random() < %s THEN '01' ELSE '00' END"
            ).format(sql.Identifier(events_table("products"))),
            (sampled,),
        )


class ObservedView(ProductViewProjection):
    """The same read model under another name and table: the 'on' side's own tracking."""

    name = "product_view_observed"
    default_table = "product_view_observed"


async def _relay(dsn: str, nats_url: str, scale: Scale, sdk: _Sdk) -> tuple[float, float]:
    name = unique("obs")
    settings = settings_for(dsn, nats_url, name)
    head = copy_backlog(dsn, template_rows(settings), scale.relay)
    _trace_backlog(dsn, SAMPLED)
    off_watch, on_watch = Stopwatch(), Stopwatch()
    specs = {
        k: StreamSpec(name=f"{name}_{k}".upper(), subjects=(f"{name}_{k}.>",))
        for k in ("off", "on")
    }
    async with NatsBroker(settings.nats_servers, name="bench-observability") as broker:
        for spec in specs.values():
            await broker.ensure_stream(spec)
        try:
            async with contextlib.AsyncExitStack() as stack:
                relays = {}
                for kind, spec in specs.items():
                    reader = await stack.enter_async_context(
                        await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                    )
                    relays[kind] = Relay(
                        log=PostgresEventLog(reader, reader, settings.log),
                        broker=broker,
                        positions=PostgresRelayPositions(reader),
                        mapper=DefaultTopicMapper(f"{name}_{kind}"),
                        config=RelayConfig(stream=spec.name, batch_size=settings.relay_batch_size),
                        instruments=(
                            PrometheusRelayMetrics(CollectorRegistry(), "products")
                            if kind == "on"
                            else NO_RELAY_INSTRUMENTS
                        ),
                    )
                    await relays[kind].reconcile()
                for r in range(1, scale.rounds * 5 + 1):
                    target = head * r // (scale.rounds * 5)
                    order = ("off", "on") if r % 2 else ("on", "off")
                    for kind in order:
                        relay = relays[kind]
                        watch = on_watch if kind == "on" else off_watch
                        before = relay.position
                        with sdk.on() if kind == "on" else contextlib.nullcontext(), watch.timing():
                            while relay.position < target:
                                if await relay.relay_once() is None:
                                    break
                        watch.count += relay.position - before
        finally:
            for spec in specs.values():
                await broker.js.delete_stream(spec.name)
    return on_watch.rate, off_watch.rate


async def _projection(dsn: str, nats_url: str, scale: Scale, sdk: _Sdk) -> tuple[float, float]:
    name = unique("obsp")
    settings = settings_for(dsn, nats_url, name)
    copy_backlog(dsn, template_rows(settings), scale.projection)
    _trace_backlog(dsn, SAMPLED)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        ObservedView().create_tables(cur)
    off_watch, on_watch = Stopwatch(), Stopwatch()
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=1, max_size=4, open=True, kwargs={"autocommit": False}
    )
    async with NatsBroker(settings.nats_servers, name="bench-observability-p") as broker:
        try:
            head = await relay_backlog(settings, broker)
            config = WorkerConfig(
                stream=settings.stream,
                filter_subject=f"{name}.>",
                batch_size=settings.projection_batch_size,
            )
            workers = {
                "off": ProjectionWorker(
                    projection=ProductViewProjection(), broker=broker, pool=pool, config=config
                ),
                "on": ProjectionWorker(
                    projection=ObservedView(),
                    broker=broker,
                    pool=pool,
                    config=config,
                    instruments=PrometheusConsumerMetrics(
                        CollectorRegistry(), "projection", ObservedView.name
                    ),
                ),
            }
            for worker in workers.values():
                await worker.start()
            for r in range(1, scale.rounds * 5 + 1):
                target = head * r // (scale.rounds * 5)
                order = ("off", "on") if r % 2 else ("on", "off")
                for kind in order:
                    worker = workers[kind]
                    watch = on_watch if kind == "on" else off_watch
                    before = worker.positions.get(settings.log, 0)
                    with sdk.on() if kind == "on" else contextlib.nullcontext(), watch.timing():
                        while worker.positions.get(settings.log, 0) < target:
                            await worker.process_once()
                    watch.count += worker.positions.get(settings.log, 0) - before
            for worker in workers.values():
                await worker.close()
        finally:
            pool.close()
            await broker.js.delete_stream(settings.stream)
    return on_watch.rate, off_watch.rate


def _no_sdk_costs() -> dict[str, float]:
    """Microseconds that tracing adds with no SDK installed: per save, per message."""
    stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    n = 20_000

    def save() -> None:
        with tracing.save_span("products"):
            pass

    spans = tracing.PublishSpans()

    def message() -> None:
        spans.begin(stored, subject="events.A.B", message_id="products:1", attributes={})

    return {
        "no_sdk_us_per_save": round(timeit.timeit(save, number=n) / n * 1e6, 2),
        "no_sdk_us_per_message": round(timeit.timeit(message, number=n) / n * 1e6, 2),
    }


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """The relay and a projection, observed and not, on the same backlog in the same run."""
    sdk = _Sdk()
    try:
        with fresh_database(server_dsn, "obs_relay") as dsn:
            relay_on, relay_off = asyncio.run(_relay(dsn, nats_url, scale, sdk))
        with fresh_database(server_dsn, "obs_projection") as dsn:
            projection_on, projection_off = asyncio.run(_projection(dsn, nats_url, scale, sdk))
    finally:
        sdk.provider.shutdown()
    costs = _no_sdk_costs()
    variant = f"metrics + tracing on ({SAMPLED:.0%} sampled)"
    relay = throughput(
        "observability", f"relay, {variant}", relay_on, "relay off", relay_off, at_least=0.95
    )
    projection = throughput(
        "observability",
        f"projection, {variant}",
        projection_on,
        "projection off",
        projection_off,
        at_least=0.95,
    )
    relay.extra.update(costs)
    return [relay, projection]
