"""The HTTP endpoint answers /metrics, /healthz and /readyz from its own thread."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from eventplatform.errors import ConfigurationError
from eventplatform.observability.health import Health
from eventplatform.observability.server import MetricsServer


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.fixture
def served():
    registry = CollectorRegistry()
    Counter("eventplatform_test_things", "things", registry=registry).inc(3)
    health = Health(("postgres",))
    with MetricsServer(registry, health, host="127.0.0.1", port=0) as server:
        yield server, health


def test_metrics_are_served_in_the_prometheus_text_format(served):
    server, _ = served
    status, content_type, body = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "eventplatform_test_things_total 3.0" in body


def test_readyz_is_503_until_the_required_checks_are_ok_and_says_which(served):
    server, health = served
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert "postgres FAIL: not reported yet" in body
    health.report("postgres", True, "reached")
    status, _, body = get(server.url + "/readyz")
    assert status == 200
    assert body.startswith("ready\n")


def test_healthz_says_alive_and_other_paths_are_not_found(served):
    server, _ = served
    assert get(server.url + "/healthz")[0] == 200
    assert get(server.url + "/nothing")[0] == 404


def test_a_taken_port_is_a_configuration_error_naming_the_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(CollectorRegistry(), Health(), host="127.0.0.1", port=port)
        with pytest.raises(ConfigurationError, match=f"APP_METRICS_PORT={port}"):
            server.start()
