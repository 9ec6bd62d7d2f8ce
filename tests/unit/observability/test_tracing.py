"""Traces continue from the command through publish and process, and cost nothing without an SDK."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from eventplatform.observability import tracing
from tests.support.tracing import by_name, recorded_spans

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def test_without_an_sdk_nothing_is_traced_and_a_stored_traceparent_passes_unchanged():
    assert not tracing.enabled()
    with tracing.save_span("products") as stored:
        assert stored is None
    spans = tracing.PublishSpans()
    sent = spans.begin(SAMPLED, subject="events.A.B", message_id="products:1", attributes={})
    assert sent == SAMPLED
    spans.end()


def test_without_an_sdk_a_context_extracted_from_a_request_is_still_stored():
    context = tracing.parse_traceparent(SAMPLED)
    assert context is not None
    with trace.use_span(trace.NonRecordingSpan(context)), tracing.save_span("products") as stored:
        assert stored == SAMPLED


def test_a_save_is_a_span_whose_traceparent_is_the_one_stored():
    with recorded_spans() as exporter:
        tracer = trace.get_tracer("test")
        with (
            tracer.start_as_current_span("command") as command,
            tracing.save_span("products") as stored,
        ):
            pass
        (save,) = by_name(exporter.get_finished_spans(), "save products")
    assert stored == tracing.format_traceparent(save.context)
    assert save.parent is not None
    assert save.parent.span_id == command.get_span_context().span_id


def test_publish_spans_are_children_of_the_stored_trace_and_their_context_is_sent():
    with recorded_spans() as exporter:
        spans = tracing.PublishSpans()
        sent = spans.begin(
            SAMPLED,
            subject="events.Product.Created",
            message_id="products:7",
            attributes={"eventplatform.position": 7},
        )
        spans.end()
        (publish,) = exporter.get_finished_spans()
    assert publish.name == "publish events.Product.Created"
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert f"{publish.parent.span_id:016x}" == SAMPLED[36:52]
    assert f"{publish.context.trace_id:032x}" == SAMPLED[3:35]
    assert sent == tracing.format_traceparent(publish.context)
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == "products:7"


def test_an_unsampled_or_missing_trace_gets_no_span_but_keeps_its_traceparent():
    with recorded_spans() as exporter:
        spans = tracing.PublishSpans()
        assert spans.begin(UNSAMPLED, subject="s", message_id="m", attributes={}) == UNSAMPLED
        assert spans.begin(None, subject="s", message_id="m", attributes={}) is None
        assert spans.begin("garbage", subject="s", message_id="m", attributes={}) is None
        spans.end()
        assert exporter.get_finished_spans() == ()


def test_a_failed_batch_ends_its_publish_spans_as_errors():
    with recorded_spans() as exporter:
        spans = tracing.PublishSpans()
        spans.begin(SAMPLED, subject="s", message_id="m", attributes={})
        spans.end(TimeoutError("no ack"))
        (publish,) = exporter.get_finished_spans()
    assert not publish.status.is_ok
    assert "no ack" in (publish.status.description or "")


def test_process_spans_of_a_batch_cover_its_transaction_and_continue_each_trace():
    start = time.time_ns()
    with recorded_spans() as exporter:
        tracing.record_processed(
            "product_view",
            [(SAMPLED, {"eventplatform.position": 1}), (UNSAMPLED, {}), (None, {})],
            start_ns=start,
            end_ns=start + 5_000_000,
        )
        (process,) = exporter.get_finished_spans()
    assert process.name == "process product_view"
    assert process.kind is SpanKind.CONSUMER
    assert process.start_time == start
    assert process.end_time == start + 5_000_000
    assert process.parent is not None
    assert f"{process.parent.span_id:016x}" == SAMPLED[36:52]


def test_a_handler_runs_inside_its_process_span():
    with recorded_spans() as exporter:
        with tracing.process_span("welcome_mail", SAMPLED, {}):
            inner = trace.get_current_span().get_span_context()
        (process,) = exporter.get_finished_spans()
    assert inner.span_id == process.context.span_id


def test_malformed_and_all_zero_traceparents_are_no_context():
    assert tracing.parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    assert (
        tracing.parse_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is None
    )
    assert tracing.parse_traceparent("not one") is None
