"""The SDK is installed only when OTEL_TRACES_EXPORTER asks for it."""

from __future__ import annotations

import pytest

from eventplatform.errors import ConfigurationError
from eventplatform.observability.otel import configure_tracing


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_tracing_stays_off_unless_an_exporter_is_named(environ):
    assert configure_tracing("relay", environ) is None


def test_an_unknown_exporter_is_a_configuration_error_naming_the_variable():
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER='jaeger'"):
        configure_tracing("relay", {"OTEL_TRACES_EXPORTER": "jaeger"})
