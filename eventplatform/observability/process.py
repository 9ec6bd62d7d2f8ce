"""What one platform process serves and reports: a registry, its health, the HTTP endpoint.

The composition root (``eventplatform relay|project|handle``) builds one
:class:`Observability` from the settings and hands it to the runner, which registers its
instruments and reports its health. Off (None) when ``APP_METRICS_PORT`` is unset.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, ProcessCollector

from eventplatform.observability.health import Health
from eventplatform.observability.metrics import (
    ConsumerKind,
    PrometheusConsumerMetrics,
    PrometheusRelayMetrics,
)
from eventplatform.observability.server import MetricsServer
from eventplatform.settings import Settings


class Observability:
    """A process's metrics registry, health and (optionally) its HTTP server.

    Args:
        registry: the process's registry (a fresh one by default, never the global one).
        health: liveness and readiness (default: PostgreSQL and NATS required).
        server: serves both (None: nothing is served, e.g. in-process tests).
        interval: seconds between the runners' periodic looks (lag, pending, connections).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        health: Health | None = None,
        server: MetricsServer | None = None,
        interval: float = 2.0,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.health = health or Health()
        self.server = server
        self.interval = interval

    @classmethod
    def from_settings(
        cls, settings: Settings, *, required: Sequence[str] = ("postgres", "nats")
    ) -> Observability | None:
        """The process's observability as ``APP_METRICS_*`` describe it, not started; None
        when ``APP_METRICS_PORT`` is unset."""
        if settings.metrics_port is None:
            return None
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # memory, CPU, open files of this process
        health = Health(required)
        server = MetricsServer(
            registry, health, host=settings.metrics_host, port=settings.metrics_port
        )
        return cls(
            registry=registry, health=health, server=server, interval=settings.metrics_interval
        )

    def relay_metrics(self, log: str) -> PrometheusRelayMetrics:
        """The relay's metrics for ``log``, registered here."""
        return PrometheusRelayMetrics(self.registry, log)

    def consumer_metrics(self, kind: ConsumerKind, name: str) -> PrometheusConsumerMetrics:
        """A projection's or a handler's metrics, registered here."""
        return PrometheusConsumerMetrics(self.registry, kind, name)

    def start(self) -> Observability:
        """Starts serving (when there is a server)."""
        if self.server is not None:
            self.server.start()
        return self

    def stop(self) -> None:
        """Stops serving."""
        if self.server is not None:
            self.server.stop()
