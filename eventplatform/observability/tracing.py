"""OpenTelemetry tracing through the API only: a command's trace continues into the relay and
the consumers, across processes, carried by the W3C ``traceparent`` of each event.

The library depends on ``opentelemetry-api`` alone. Without an SDK installed and configured
(see :mod:`eventplatform.observability.otel`) the API is a no-op, and so is everything here at
its cheapest: one check of the global tracer provider per save or batch, and a stored
``traceparent`` passed along unchanged. With an SDK:

* **save**: each :meth:`~eventplatform.store.application.EventSourcedApplication.save` runs in
  a span ``save <log>`` (a child of the caller's current span, or a new trace), and that
  span's ``traceparent`` is stored with each of its events;
* **publish**: the relay starts a ``publish <subject>`` span (PRODUCER) per event whose stored
  trace is sampled, a child of the save span, ended when JetStream acknowledged the batch; the
  message carries *its* ``traceparent`` (header and CloudEvents attribute);
* **process**: a projection records a ``process <projection>`` span (CONSUMER) per applied
  event, a child of the publish span, spanning the batch transaction that applied it; a
  handler runs each event's handler inside a ``process <handler>`` span, so that the handler's
  own spans (an HTTP call, a mail) join the trace.

The platform continues traces; apart from the save it starts none (an event stored without a
``traceparent`` gets no spans downstream). An event whose trace was not sampled gets no spans
either (what a parent-based sampler would decide anyway), but its ``traceparent`` is still
passed along, so a sampling decision made at the command holds end to end.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

TRACER_NAME = "eventplatform"
#: A W3C trace context header value (version 00 as written; later versions' prefix accepted).
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

_cached: tuple[object, trace.Tracer] | None = None


def enabled() -> bool:
    """Whether an SDK tracer provider is installed (else every span would be a no-op)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def tracer() -> trace.Tracer:
    """The platform's tracer from the current global provider (cached per provider)."""
    global _cached
    provider = trace.get_tracer_provider()
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(TRACER_NAME, _version()))
    return _cached[1]


def _version() -> str | None:
    try:
        return importlib.metadata.version("eventplatform")
    except importlib.metadata.PackageNotFoundError:
        return None


def format_traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, None when there is none.

    Also without an SDK: a context a web framework extracted from a request is passed on.
    """
    context = trace.get_current_span().get_span_context()
    return format_traceparent(context) if context.is_valid else None


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The remote span context of a ``traceparent``; None when absent, malformed or invalid
    (all-zero ids), as the W3C specification says to treat it."""
    if not value or not TRACEPARENT.match(value) or value.startswith("ff"):
        return None
    context = SpanContext(
        trace_id=int(value[3:35], 16),
        span_id=int(value[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(value[53:55], 16) & 0x01),
    )
    return context if context.is_valid else None


def is_sampled(value: str) -> bool:
    """Whether a (well-formed) ``traceparent`` has its sampled flag set."""
    return bool(int(value[-2:], 16) & 0x01)


@contextlib.contextmanager
def save_span(log: str) -> Iterator[str | None]:
    """The span of one save; yields the ``traceparent`` to store with its events.

    Without an SDK no span is made, and the current context's ``traceparent`` (if any) is
    what is stored.
    """
    if not enabled():
        yield current_traceparent()
        return
    with tracer().start_as_current_span(
        f"save {log}", kind=SpanKind.INTERNAL, attributes={"eventplatform.log": log}
    ) as span:
        yield format_traceparent(span.get_span_context())


class PublishSpans:
    """The relay's spans of one batch: one per event of a sampled trace.

    Create one per batch; :meth:`begin` per message says what ``traceparent`` to send,
    :meth:`end` closes them all when the batch's acks are in (or failed).
    """

    def __init__(self) -> None:
        self._on = enabled()
        self._spans: list[Span] = []

    def begin(
        self, stored: str | None, *, subject: str, message_id: str, attributes: Mapping[str, Any]
    ) -> str | None:
        """Starts the publish span of one event; returns the ``traceparent`` its message
        carries (the span's, or the stored one unchanged when there is no span)."""
        if stored is None or not TRACEPARENT.match(stored):
            return None
        if not self._on or not is_sampled(stored):
            return stored
        parent = parse_traceparent(stored)
        if parent is None:
            return None
        span = tracer().start_span(
            f"publish {subject}",
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "publish",
                "messaging.destination.name": subject,
                "messaging.message.id": message_id,
                **attributes,
            },
        )
        self._spans.append(span)
        return format_traceparent(span.get_span_context())

    def end(self, error: BaseException | None = None) -> None:
        """Ends every span of the batch, marked failed when ``error`` is given."""
        spans, self._spans = self._spans, []
        for span in spans:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()


def record_processed(
    consumer: str,
    events: Sequence[tuple[str | None, Mapping[str, Any]]],
    *,
    start_ns: int,
    end_ns: int,
) -> None:
    """Records a ``process <consumer>`` span per event of a sampled trace, after the fact.

    A projection applies a batch in one transaction: each event's span covers that
    transaction (``start_ns`` to ``end_ns``, from :func:`time.time_ns`), and is a child of the
    span that published the event.

    Args:
        consumer: the projection's name.
        events: per applied event, its message's ``traceparent`` and span attributes.
        start_ns: when the batch transaction began.
        end_ns: when it committed.
    """
    if not enabled():
        return
    t = tracer()
    for value, attributes in events:
        parent = parse_traceparent(value)
        if parent is None or not parent.trace_flags.sampled:
            continue
        span = t.start_span(
            f"process {consumer}",
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.operation.type": "process", **attributes},
            start_time=start_ns,
        )
        span.end(end_time=end_ns)


@contextlib.contextmanager
def process_span(
    consumer: str, traceparent: str | None, attributes: Mapping[str, Any]
) -> Iterator[None]:
    """The current span while a handler handles one event (none without an SDK, without a
    ``traceparent``, or for an event of an unsampled trace)."""
    parent = parse_traceparent(traceparent) if traceparent else None
    if parent is None or not parent.trace_flags.sampled or not enabled():
        yield
        return
    with tracer().start_as_current_span(
        f"process {consumer}",
        context=trace.set_span_in_context(NonRecordingSpan(parent)),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.operation.type": "process", **attributes},
    ):
        yield
