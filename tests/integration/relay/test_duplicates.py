"""A duplicate ack is checked, not trusted: another's message under the relay's id is no ack."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventplatform.relay.relay import ForeignDuplicate
from tests.integration.relay.conftest import WINDOW
from tests.support.relay import (
    create_products,
    genuine_sequences,
    publish_as,
    relay_position,
    relays_body,
    stored_event,
    stream_content,
    until_position,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def run_until(relay, dsn: str, position: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await until_position(dsn, position, timeout=10 + 5 * WINDOW)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_an_event_dropped_as_the_duplicate_of_a_forgery_is_held_until_jetstream_takes_it(
    settings, parts, caplog
):
    ids = create_products(settings, 2, "A")
    relay = parts.relay(retry_max=0.2)
    assert await relay.relay_once() is not None
    ids += create_products(settings, 2, "B")
    # While the relay is idle, a forger publishes under the next event's message id.
    seq = await publish_as(parts.broker.js, parts.subject, b'{"evil": 1}', f"products:{ids[2]}")

    with caplog.at_level(logging.INFO, logger="eventplatform.relay"):
        await run_until(relay, settings.dsn, ids[-1])

    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == ids, "event 3 lost or overtaken"
    [error] = errors(caplog)  # once, however many attempts it took
    assert f"dropped products:{ids[2]} as a duplicate of stream {settings.stream!r} seq {seq}" in (
        error
    )
    assert "NOT in the stream" in error
    assert any("the held event is in the stream now" in r.getMessage() for r in caplog.records)


async def test_the_position_stays_before_an_event_taken_for_someone_elses_message(settings, parts):
    ids = create_products(settings, 3)
    await publish_as(parts.broker.js, parts.subject, b"{}", f"products:{ids[1]}")
    relay = parts.relay()
    await relay.reconcile()  # passes over the forgery: nothing of the log is published yet

    with pytest.raises(ForeignDuplicate) as held:
        await relay.relay_once()

    assert held.value.notification == ids[1]
    assert held.value.seq == 1
    assert relay.position == ids[0]
    assert await relay_position(settings.dsn) == ids[0]
    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == ids[:1]


async def test_a_batch_behind_a_forged_next_id_at_the_tail_does_not_overtake_the_event(
    settings, parts
):
    ids = create_products(settings, 1, "A")
    relay = parts.relay(retry_max=0.2)
    assert await relay.relay_once() is not None
    ids += create_products(settings, 4, "B")
    await publish_as(parts.broker.js, parts.subject, b"{}", f"products:{ids[1]}")
    # The relay knows the forgery is the stream's last message: the first message of its next
    # batch expects exactly it, and by its id it is what the second message expects too.
    await relay.reconcile()

    await run_until(relay, settings.dsn, ids[-1])

    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == ids


async def test_a_duplicate_of_the_relays_own_message_counts_as_published_at_once(
    settings, parts, caplog
):
    ids = create_products(settings, 3)
    relay = parts.relay()
    await relay.reconcile()
    # A deposed leader published event 1 and crashed before anything else.
    await publish_as(
        parts.broker.js,
        parts.subject,
        relays_body(stored_event(settings.dsn, ids[0])),
        f"products:{ids[0]}",
    )
    await relay.reconcile()
    relay.position = 0  # as if this relay had not seen it: JetStream drops its repeat

    with caplog.at_level(logging.WARNING, logger="eventplatform.relay"):
        batch = await relay.relay_once()

    assert batch is not None
    assert batch.duplicates == 1
    assert relay.position == ids[-1]
    assert not caplog.records
    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == ids
