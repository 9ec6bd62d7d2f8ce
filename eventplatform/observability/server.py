"""The HTTP endpoint of a platform process: ``/metrics``, ``/healthz``, ``/readyz``.

A small threaded server in a daemon thread of its own, so a scrape is answered while the event
loop is busy and a wedged loop shows as ``/healthz`` failing instead of as silence. Nothing is
started at import: :meth:`MetricsServer.start` binds (port 0 picks a free port; :attr:`port`
then tells which).

* ``/metrics``: the registry in the Prometheus text format (or OpenMetrics when the scraper
  asks for it);
* ``/healthz``: 200 ``ok`` while the process is alive, else 503;
* ``/readyz``: 200 while every required check is ok, else 503; the body lists each check.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from eventplatform.errors import ConfigurationError
from eventplatform.observability.health import Health

logger = logging.getLogger(__name__)


class MetricsServer:
    """Serves a registry and a :class:`Health` over HTTP.

    Args:
        registry: what ``/metrics`` shows.
        health: what ``/healthz`` and ``/readyz`` answer.
        host: the address to bind (``0.0.0.0``: every interface, as in a container).
        port: the port (0: any free one).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - in a container the scraper is outside
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.health = health
        self.host = host
        self._requested = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            return self._requested
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (127.0.0.1 when bound to every interface)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Binds and serves in a daemon thread.

        Raises:
            ConfigurationError: the address cannot be bound (e.g. the port is taken by
                another process: give each process its own ``APP_METRICS_PORT``).
        """
        handler = _handler(self.registry, self.health)
        try:
            self._server = ThreadingHTTPServer((self.host, self._requested), handler)
        except OSError as e:
            msg = (
                f"APP_METRICS_PORT={self._requested}: cannot serve metrics on {self.host}:"
                f"{self._requested}: {e.strerror or e} (each process needs its own port)"
            )
            raise ConfigurationError(msg) from e
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="eventplatform-metrics", daemon=True
        )
        self._thread.start()
        logger.info("metrics, /healthz and /readyz on %s", self.url)
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "eventplatform"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(registry), content_type)
            elif path == "/healthz":
                alive, detail = health.alive()
                self._send(200 if alive else 503, f"{'ok' if alive else 'stalled'}: {detail}\n")
            elif path == "/readyz":
                ready, checks = health.ready()
                lines = [f"{'ready' if ready else 'not ready'}"]
                lines += [
                    f"{name} {'ok' if c.ok else 'FAIL'}{': ' + c.detail if c.detail else ''}"
                    for name, c in sorted(checks.items())
                ]
                self._send(200 if ready else 503, "\n".join(lines) + "\n")
            else:
                self._send(404, "not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, body: bytes | str, content_type: str = "") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type or "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds are not news

    return Handler
