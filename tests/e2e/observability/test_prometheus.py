"""A real Prometheus scrapes the relay and a projection worker and evaluates the example alert
rules: quiet while the platform is healthy, firing when dead letters appear, when no relay
leads, when relay lag grows and when the projection stalls.

The rules are deploy/prometheus/alerts.yml with every minute read as a second (the test
cannot wait for minutes); their production durations are checked by promtool's rule specs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from domain import CreateProduct, Products
from eventplatform.store.schema import create_schema
from eventplatform.testing.embedded import free_port
from projections import ProductViewProjection
from tests.support.platform import settings_for
from tests.support.processes import Load, Processes, wait_until
from tests.support.scrape import endpoint_in, get

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="no prometheus binary (Debian: apt-get install prometheus)",
    ),
]

RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "alerts.yml"


def minutes_as_seconds(rules: str) -> str:
    """The rules with each ``[5m]`` window and ``for: 2m`` read as seconds."""
    rules = re.sub(r"\[(\d+)m\]", r"[\1s]", rules)
    return re.sub(r"(for:\s*)(\d+)m\b", r"\g<1>\g<2>s", rules)


class Prometheus:
    """A throwaway Prometheus server scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "alerts.yml").write_text(minutes_as_seconds(RULES.read_text()))
        scrape_configs = [
            {"job_name": job, "static_configs": [{"targets": [target.removeprefix("http://")]}]}
            for job, target in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "alerts.yml")],
            "scrape_configs": scrape_configs,
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())["data"]

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """alertname -> the label sets of its firing alerts."""
        alerts: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("/api/v1/alerts")["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return alerts

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.api("/api/v1/query?query=" + urllib.parse.quote(expr))["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ready(url: str) -> bool:
    return get(url + "/readyz")[0] == 200


@pytest.fixture
def platform(tmp_path, database_dsn, nats_url, unique_name) -> Iterator[tuple[Any, dict[str, str]]]:
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    procs = Processes(
        settings,
        APP_METRICS_PORT="0",
        APP_METRICS_HOST="127.0.0.1",
        APP_METRICS_INTERVAL="0.5",
    )
    urls = {}
    try:
        for job, args in (
            ("eventplatform-relay", ("relay",)),
            ("eventplatform-projection", ("project", "projections:ProductViewProjection")),
        ):
            proc = procs.spawn(*args, log_dir=tmp_path)
            url = wait_until(
                endpoint_in(functools.partial(procs.log_of, proc)), timeout=30, what=job
            )
            wait_until(functools.partial(ready, url), timeout=30, what=f"{job} ready")
            urls[job] = url
        yield settings, urls
    finally:
        procs.stop_all()


def test_prometheus_evaluates_the_alert_rules_against_the_live_processes(platform, tmp_path):
    settings, urls = platform
    prometheus = Prometheus(tmp_path, urls)
    try:
        wait_until(lambda: get(prometheus.url + "/-/ready")[0] == 200, timeout=30, what="ready")
        app = Products(settings)
        try:
            for i in range(20):
                app.create(CreateProduct(name=f"p{i}", sku=f"S{i}", price=Decimal(5)))
        finally:
            app.close()

        # Healthy: both targets up, events counted, lag back at 0, nothing firing.
        wait_until(
            lambda: len(prometheus.query('up{job=~"eventplatform.*"} == 1')) == 2,
            timeout=30,
            what="both targets scraped",
        )
        wait_until(
            lambda: prometheus.query(
                "eventplatform_projection_applied_events_total == 20"
                " and on() max(eventplatform_relay_lag_events) == 0"
            ),
            timeout=30,
            what="Prometheus seeing all 20 events applied and no lag",
        )
        assert prometheus.firing() == {}

        # A message nobody can read: the projection dead-letters it.
        async def publish_garbage() -> None:
            nc = await nats.connect(settings.nats_url)
            try:
                await nc.jetstream().publish(f"{settings.subject_prefix}.Product.Created", b"{")
            finally:
                await nc.close()

        asyncio.run(publish_garbage())
        firing = wait_until(
            lambda: "EventPlatformDeadLetters" in (f := prometheus.firing()) and f,
            timeout=30,
            what="the dead-letter alert firing",
        )
        assert firing["EventPlatformDeadLetters"][0]["projection"] == "product_view"

        # Someone else takes the relay's lease: no scraped relay leads, and writes go on.
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE eventplatform_leases SET holder = 'elsewhere', token = token + 1,"
                " expires_at = now() + interval '1 hour' WHERE name = 'relay:products'"
            )
        with Load(settings, pause=0.05):
            firing = wait_until(
                lambda: (
                    {
                        "EventPlatformNoRelayLeader",
                        "EventPlatformRelayLagGrowing",
                        "EventPlatformProjectionLagGrowing",
                        "EventPlatformConsumerStalled",
                    }
                    <= set(f := prometheus.firing())
                    and f
                ),
                timeout=60,
                what="the leader, lag and stall alerts firing",
            )
        assert firing["EventPlatformNoRelayLeader"][0]["log"] == "products"
        assert firing["EventPlatformConsumerStalled"][0]["projection"] == "product_view"
        assert "EventPlatformForgedMessages" not in firing
        assert "EventPlatformProcessDown" not in firing
    finally:
        prometheus.stop()
