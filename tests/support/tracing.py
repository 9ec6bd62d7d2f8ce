"""An OpenTelemetry SDK for one test: spans recorded in memory, the global provider restored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Installs an SDK tracer provider whose spans land in the yielded exporter.

    The API lets a process set its global provider once; tests need it per test, so the
    global is swapped and put back (what opentelemetry's own test utilities do).
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = saved
        provider.shutdown()


def by_name(
    spans: tuple[ReadableSpan, ...] | list[ReadableSpan], prefix: str
) -> list[ReadableSpan]:
    """The spans whose name starts with ``prefix``."""
    return [s for s in spans if s.name.startswith(prefix)]
