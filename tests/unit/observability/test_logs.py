"""APP_LOG_FORMAT=json: one JSON object per line, with the process's labels and the trace."""

from __future__ import annotations

import io
import logging

import orjson
from opentelemetry import trace

from eventplatform.observability.logs import configure_logging
from eventplatform.observability.tracing import parse_traceparent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_logger_message_and_the_process_labels():
    out = io.StringIO()
    handler = configure_logging(
        "INFO", "json", labels={"component": "relay", "log": "products"}, stream=out
    )
    try:
        logging.getLogger("eventplatform.relay").warning("lag %d", 5)
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = lines(out)
    assert line["level"] == "warning"
    assert line["logger"] == "eventplatform.relay"
    assert line["message"] == "lag 5"
    assert line["component"] == "relay"
    assert line["log"] == "products"
    assert str(line["time"]).endswith("+00:00")


def test_labels_passed_with_a_record_and_the_current_trace_are_included():
    out = io.StringIO()
    handler = configure_logging("INFO", "json", stream=out)
    context = parse_traceparent(TRACEPARENT)
    assert context is not None
    try:
        with trace.use_span(trace.NonRecordingSpan(context)):
            logging.getLogger("x").info("applied", extra={"projection": "product_view"})
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = lines(out)
    assert line["projection"] == "product_view"
    assert line["trace_id"] == TRACEPARENT[3:35]
    assert line["span_id"] == TRACEPARENT[36:52]


def test_an_exception_is_one_field_of_the_same_line():
    out = io.StringIO()
    handler = configure_logging("INFO", "json", stream=out)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("x").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = lines(out)
    assert "RuntimeError: boom" in str(line["exception"])


def test_text_stays_the_default_format():
    out = io.StringIO()
    handler = configure_logging("INFO", stream=out)
    try:
        logging.getLogger("x").info("hello")
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.getvalue().rstrip().endswith("INFO    x: hello")
