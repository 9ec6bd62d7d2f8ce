"""Observability: Prometheus metrics, health endpoints, OpenTelemetry tracing, JSON logs.

A leaf of the package, like logging: it depends on the root only (settings, errors), and every
part of the data path may use it. Offers the instrument ports the relay and the consumers report
through (:class:`RelayInstruments`, :class:`ConsumerInstruments`) with their Prometheus adapters
and null objects, :class:`Observability` (one process's registry, :class:`Health` and
:class:`MetricsServer`: ``/metrics``, ``/healthz``, ``/readyz`` on ``APP_METRICS_PORT``), the
tracing helpers (``tracing``: spans of save, publish and process, the W3C ``traceparent``),
:func:`configure_tracing` (the SDK from ``OTEL_*`` variables, an extra) and
:func:`configure_logging` (``APP_LOG_FORMAT=json``).
"""

from eventplatform.observability.health import Health
from eventplatform.observability.logs import JsonFormatter, configure_logging
from eventplatform.observability.metrics import (
    NO_CONSUMER_INSTRUMENTS,
    NO_RELAY_INSTRUMENTS,
    ConsumerInstruments,
    PrometheusConsumerMetrics,
    PrometheusRelayMetrics,
    RelayInstruments,
)
from eventplatform.observability.otel import configure_tracing
from eventplatform.observability.process import Observability
from eventplatform.observability.server import MetricsServer

__all__ = [
    "NO_CONSUMER_INSTRUMENTS",
    "NO_RELAY_INSTRUMENTS",
    "ConsumerInstruments",
    "Health",
    "JsonFormatter",
    "MetricsServer",
    "Observability",
    "PrometheusConsumerMetrics",
    "PrometheusRelayMetrics",
    "RelayInstruments",
    "configure_logging",
    "configure_tracing",
]
