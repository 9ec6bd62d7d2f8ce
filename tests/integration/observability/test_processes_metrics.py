"""Relay and projection processes serve their metrics while events flow, and say when they
cannot reach PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from domain import CreateProduct, Products
from eventplatform.store.schema import create_schema
from projections import ProductViewProjection
from tests.support.platform import settings_for
from tests.support.processes import Processes, wait_until
from tests.support.scrape import endpoint_in, get, scrape, value

pytestmark = pytest.mark.integration

METRICS = {"APP_METRICS_PORT": "0", "APP_METRICS_HOST": "127.0.0.1", "APP_METRICS_INTERVAL": "0.2"}


def write(settings, n: int, start: int = 0) -> int:
    app = Products(settings)
    try:
        position = 0
        for i in range(start, start + n):
            result = app.create(CreateProduct(name=f"p{i}", sku=f"S{i}", price=Decimal(i % 90 + 1)))
            position = result.position
        return position
    finally:
        app.close()


def ready(url: str) -> Callable[[], bool]:
    return lambda: get(url + "/readyz")[0] == 200


def unready(url: str) -> Callable[[], tuple[int, str] | None]:
    def check() -> tuple[int, str] | None:
        answer = get(url + "/readyz")
        return answer if answer[0] == 503 else None

    return check


@pytest.fixture
def processes(tmp_path):
    started: list[Processes] = []

    def start(settings, *args: str) -> tuple[Processes, str]:
        procs = Processes(settings, **METRICS)
        started.append(procs)
        proc = procs.spawn(*args, log_dir=tmp_path)
        url = wait_until(
            endpoint_in(lambda: procs.log_of(proc)), timeout=30, what=f"{args[0]} serving metrics"
        )
        return procs, url

    yield start
    for procs in started:
        procs.stop_all()


def test_counters_move_lag_returns_to_zero_and_event_ages_fill(
    processes, database_dsn, nats_url, unique_name
):
    settings = settings_for(database_dsn, nats_url, unique_name)
    create_schema(database_dsn, logs=["products"], projections=[ProductViewProjection()])
    _, relay = processes(settings, "relay")
    _, projection = processes(settings, "project", "projections:ProductViewProjection")
    wait_until(lambda: get(relay + "/readyz")[0] == 200, timeout=30, what="relay ready")
    wait_until(lambda: get(projection + "/readyz")[0] == 200, timeout=30, what="worker ready")
    log = {"log": "products"}
    view = {"projection": "product_view", "partition": ""}
    view_log = {**view, **log}

    head = write(settings, 30)

    def relay_caught_up():
        s = scrape(relay)
        return (
            value(s, "eventplatform_relay_published_messages_total", **log) == 30
            and value(s, "eventplatform_relay_lag_events", **log) == 0
            and value(s, "eventplatform_log_head_position", **log) == head
            and s
        )

    s = wait_until(relay_caught_up, timeout=30, what="the relay publishing 30 events")
    assert value(s, "eventplatform_relay_leader", **log) == 1
    assert value(s, "eventplatform_relay_appended_to_published_seconds_count", **log) == 30
    assert value(s, "eventplatform_relay_batch_messages_sum", **log) == 30
    assert (value(s, "eventplatform_relay_ack_latency_seconds_count", **log) or 0) >= 1

    def projection_caught_up():
        s = scrape(projection)
        return (
            value(s, "eventplatform_projection_applied_events_total", **view) == 30
            and value(s, "eventplatform_projection_lag_events", **view_log) == 0
            and s
        )

    s = wait_until(projection_caught_up, timeout=30, what="the projection applying 30 events")
    assert value(s, "eventplatform_projection_position", **view_log) == head
    assert value(s, "eventplatform_projection_appended_to_applied_seconds_count", **view_log) == 30
    assert value(s, "eventplatform_projection_published_to_applied_seconds_count", **view_log) == 30
    age = value(s, "eventplatform_projection_appended_to_applied_seconds_sum", **view_log)
    assert age is not None
    assert 0 < age / 30 < 30, "an event's age is seconds at most here"
    assert value(s, "eventplatform_projection_dead_lettered_messages_total", **view) == 0

    head = write(settings, 10, start=30)
    wait_until(
        lambda: value(scrape(projection), "eventplatform_projection_position", **view_log) == head,
        timeout=30,
        what="the counters moving again",
    )
    s = scrape(projection)
    assert value(s, "eventplatform_projection_applied_events_total", **view) == 40
    assert value(scrape(relay), "eventplatform_relay_published_messages_total", **log) == 40


def test_readyz_turns_unready_while_postgresql_is_stopped(
    processes, embedded_postgres, nats_url, unique_name
):
    dsn = embedded_postgres.dsn
    settings = settings_for(dsn, nats_url, unique_name)
    create_schema(dsn, logs=["products"], projections=[ProductViewProjection()])
    _, relay = processes(settings, "relay")
    _, projection = processes(settings, "project", "projections:ProductViewProjection")
    for url in (relay, projection):
        wait_until(ready(url), timeout=30, what="ready")
    _, body = get(relay + "/readyz")
    assert "role ok: leader" in body

    embedded_postgres.stop()
    for url in (relay, projection):
        _, body = wait_until(unready(url), timeout=30, what="unready")
        assert "postgres FAIL" in body
        assert get(url + "/healthz")[0] == 200, "alive all the same: it waits for the database"

    embedded_postgres.start()
    for url in (relay, projection):
        wait_until(ready(url), timeout=30, what="ready again")
    wait_until(
        lambda: (
            (
                value(
                    scrape(relay),
                    "eventplatform_relay_reconnects_total",
                    log="products",
                    dependency="postgres",
                )
                or 0
            )
            >= 1
        ),
        timeout=30,
        what="the relay counting its reconnect to PostgreSQL",
    )
