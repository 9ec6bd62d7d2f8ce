"""Installing the OpenTelemetry SDK in a platform process, from the standard ``OTEL_*`` variables.

The SDK and its exporters are an extra (``pip install 'eventplatform[otel]'``): the library
itself needs only the API. A process installs the SDK when ``OTEL_TRACES_EXPORTER`` names an
exporter: ``otlp`` (OTLP over HTTP; ``OTEL_EXPORTER_OTLP_ENDPOINT`` says where) or ``console``.
The SDK reads the rest itself: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` (e.g. ``parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG=0.1``).
Unset, ``none``, or ``OTEL_SDK_DISABLED=true``: no SDK, tracing costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from eventplatform.errors import ConfigurationError

EXPORTERS = ("otlp", "console")


def configure_tracing(
    service_name: str, environ: Mapping[str, str] | None = None
) -> Callable[[], None] | None:
    """Installs the SDK's tracer provider if ``OTEL_TRACES_EXPORTER`` asks for it.

    Args:
        service_name: the default ``service.name`` (``OTEL_SERVICE_NAME`` wins).
        environ: the variables (default ``os.environ``).

    Returns:
        A function that flushes and shuts the provider down (call it on exit), or None when
        tracing stays off.

    Raises:
        ConfigurationError: an unknown exporter, or the SDK is not installed.
    """
    env = os.environ if environ is None else environ
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter_name or exporter_name == "none":
        return None
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if exporter_name not in EXPORTERS:
        msg = f"OTEL_TRACES_EXPORTER={exporter_name!r}: expected one of {', '.join(EXPORTERS)}"
        raise ConfigurationError(msg)
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        msg = (
            f"OTEL_TRACES_EXPORTER={exporter_name!r} needs the OpenTelemetry SDK: "
            "pip install 'eventplatform[otel]'"
        )
        raise ConfigurationError(msg) from e
    exporter: Any
    if exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            msg = "OTEL_TRACES_EXPORTER='otlp' needs: pip install 'eventplatform[otel]'"
            raise ConfigurationError(msg) from e
        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    attributes = {"service.name": env.get("OTEL_SERVICE_NAME") or service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider.shutdown
