"""Schema evolution through the whole path: stored v1 event → relay → consumer decodes v2."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from psycopg_pool import ConnectionPool

from eventplatform.consumers import ConsumerConfig, HandlerConsumer, IdempotentEventHandler
from eventplatform.errors import BrokerUnavailable
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.relay.runner import run_relay
from eventplatform.settings import load_settings
from eventplatform.store.application import EventSourcedApplication
from eventplatform.store.schema import create_schema

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class Widget(Aggregate):
    """Version 2 of the code: ``Created`` gained ``colour``; v1 events lack it."""

    TOPIC = "Widget"

    class Created(Aggregate.Created):
        TOPIC = "Widget.Created"
        class_version: ClassVar[int] = 2
        name: str
        colour: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["colour"] = "unknown"

    @event(Created)
    def __init__(self, name: str, colour: str) -> None:
        self.name = name
        self.colour = colour


class Widgets(EventSourcedApplication):
    name = "widgets"


async def test_an_event_stored_as_v1_reaches_a_consumer_upcast_to_v2(
    database_dsn, nats_url, unique_name
):
    settings = load_settings(
        {},
        dsn=database_dsn,
        nats_url=nats_url,
        log="widgets",
        stream=unique_name.upper(),
        subject_prefix=unique_name,
        relay_poll_interval=0.2,
    )
    create_schema(database_dsn, logs=["widgets"])
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE seen (name text, colour text)")

    # The old code wrote version 1: no colour, no class_version in the stored state.
    app = Widgets(settings)
    widget_id = uuid4()
    v1_state = app.mapper.transcoder.encode(
        {
            "timestamp": datetime.now(UTC),
            "originator_topic": "Widget",
            "name": "sprocket",
        }
    )
    app.recorder.insert_events([StoredEvent(widget_id, 1, "Widget.Created", v1_state)])
    assert app.repository.get(widget_id).colour == "unknown"  # the store upcasts
    app.close()

    def remember(cur: psycopg.Cursor[Any], created: Any) -> None:
        assert isinstance(created, Widget.Created)
        cur.execute("INSERT INTO seen VALUES (%s, %s)", (created.name, created.colour))

    handler = IdempotentEventHandler("widget-watcher", remember, event_classes=[Widget.Created])
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop))
    try:
        async with NatsBroker([nats_url]) as broker:
            with ConnectionPool(database_dsn, min_size=1, max_size=2) as pool:
                consumer = HandlerConsumer(
                    handler=handler,
                    broker=broker,
                    pool=pool,
                    config=ConsumerConfig.from_settings(settings, fetch_timeout=0.3),
                )
                async with asyncio.timeout(20):
                    while True:
                        try:
                            batch = await consumer.process_once()
                        except BrokerUnavailable:  # the relay has not created the stream yet
                            await asyncio.sleep(0.1)
                            continue
                        if batch.received:
                            break
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=20)

    assert (batch.handled, batch.dead_lettered) == (1, 0)
    with psycopg.connect(database_dsn) as conn:
        assert conn.execute("SELECT name, colour FROM seen").fetchall() == [("sprocket", "unknown")]
