"""Log output: the usual text lines, or one JSON object per line (``APP_LOG_FORMAT=json``).

JSON lines carry the same labels as the metrics (``log``, ``projection``, ``handler``) and the
process's ``component`` (``relay``, ``projection``, ``handler``), given once per process, plus
any of them passed per record with ``extra=``, and the ``trace_id`` and ``span_id`` of the
current span when there is one, so a log line can be found from a trace and the other way round.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson
from opentelemetry import trace

from eventplatform.redaction import RedactingFormatter, redact

LogFormat = Literal["text", "json"]
#: Record attributes copied into a JSON line when a call passes them with ``extra=``.
LABELS = ("component", "log", "projection", "handler", "partition")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object.

    Args:
        labels: fixed labels of this process (``{"component": "relay", "log": "products"}``).
    """

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.labels = dict(labels or {})

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (no trailing newline)."""
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.labels,
        }
        for label in LABELS:
            value = record.__dict__.get(label)
            if value is not None:
                line[label] = str(value)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = f"{context.trace_id:032x}"
            line["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(line, default=str).decode())


def configure_logging(
    level: str | int = "INFO",
    log_format: LogFormat = "text",
    *,
    labels: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Sends the root logger's records to ``stream`` (default stderr), as text or JSON, with
    credentials masked (:mod:`eventplatform.redaction`) either way.

    Replaces handlers an earlier call installed; returns the new handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(labels) if log_format == "json" else RedactingFormatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_eventplatform", False)]:
        root.removeHandler(old)
    handler._eventplatform = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # library warnings pass the same formatting and redaction
    return handler
