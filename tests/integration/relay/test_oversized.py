"""An event too large for the broker is recorded and skipped: never a wedge."""

from __future__ import annotations

import asyncio
import json
import logging
from uuid import uuid4

import psycopg
import pytest

from eventplatform.cli.main import main
from eventplatform.cli.status import read_status
from eventplatform.messagebus import cloudevents
from tests.support.relay import (
    create_products,
    genuine_sequences,
    stream_content,
    until_position,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024


def store_large_event(dsn: str, size: int) -> int:
    """Stores a ``Product.Created`` whose state is ``size`` bytes; returns its notification id."""
    state = b'{"name":"' + b"x" * (size - 11) + b'"}'
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO products_events (originator_id, originator_version, topic, state)"
            " VALUES (gen_random_uuid(), 1, 'Product.Created', %s) RETURNING notification_id",
            (state,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def oversized_rows(dsn: str) -> list[tuple[int, str, int, int]]:
    with psycopg.connect(dsn) as conn:
        return [
            (int(r[0]), r[1], int(r[2]), int(r[3]))
            for r in conn.execute(
                "SELECT notification_id, topic, size, max_payload"
                " FROM eventplatform_oversized_events WHERE log = 'products' ORDER BY 1"
            ).fetchall()
        ]


async def test_an_event_over_the_servers_max_payload_is_recorded_and_passed_not_retried_forever(
    settings, parts, caplog
):
    before = create_products(settings, 2, "A")
    large = store_large_event(settings.dsn, 2 * 1024 * 1024)  # 2 MiB against NATS's 1 MiB
    after = create_products(settings, 2, "B")
    relay = parts.relay()
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="eventplatform.relay"):
        task = asyncio.create_task(relay.run(stop))
        try:
            await until_position(settings.dsn, after[-1], timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)

    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == before + after
    [(notification, topic, size, limit)] = oversized_rows(settings.dsn)
    assert (notification, topic, limit) == (large, "Product.Created", NATS_DEFAULT_MAX_PAYLOAD)
    assert size > 2 * 1024 * 1024
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "1 unpublished event(s) are too large" in w and f"max_payload {limit}" in w
        for w in warnings
    ), "no warning at start-up"
    assert any(f"products:{large} (Product.Created) is {size} bytes" in w for w in warnings)


async def test_an_event_whose_headers_push_it_over_the_limit_is_skipped_too(settings, parts):
    # nats-py checks only the payload; the server counts the headers too and drops the
    # connection of a client that sends more.
    small = b'{"name":""}'
    envelope = len(
        cloudevents.encode(
            log="products",
            notification_id=1,
            aggregate_id=uuid4(),
            version=1,
            topic="Product.Created",
            state=small,
        )
    ) - len(small)
    # A body 10 bytes under the limit: its headers (message id, fence) are more than that.
    large = store_large_event(settings.dsn, NATS_DEFAULT_MAX_PAYLOAD - 10 - envelope)
    assert large == 1
    after = create_products(settings, 1)
    relay = parts.relay()
    batch = await relay.relay_once()
    assert batch is not None
    assert (batch.oversized, len(batch.messages)) == (1, 1)
    assert relay.position == after[-1]
    assert [r[0] for r in oversized_rows(settings.dsn)] == [large]
    assert parts.broker.nc.is_connected


async def test_status_shows_oversized_events_in_text_and_json(settings, parts, monkeypatch, capsys):
    store_large_event(settings.dsn, 2 * 1024 * 1024)
    relay = parts.relay()
    assert await relay.relay_once() is not None
    assert read_status(settings.dsn, ["products"]).logs[0].oversized == 1

    monkeypatch.setenv("APP_DSN", settings.dsn)
    assert (
        await asyncio.to_thread(main, ["--log-level", "ERROR", "status", "--log", "products"]) == 0
    )
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:6] == ["log", "head", "relay", "lag", "unrouted", "oversized"]
    assert row.split()[:6] == ["products", "1", "1", "0", "0", "1"]
    assert await asyncio.to_thread(main, ["--log-level", "ERROR", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["logs"][0]["oversized"] == 1
