"""A message id is a claim, not a proof: the relay checks the stream's tail against the store."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventplatform.leases.leadership import LeaseConfig
from eventplatform.relay.relay import StreamAheadOfLog
from eventplatform.relay.runner import run_relay
from tests.integration.relay.conftest import WINDOW
from tests.support.relay import (
    another_databases_body,
    create_products,
    genuine_sequences,
    publish_as,
    relay_position,
    relays_body,
    stored_event,
    stream_content,
    tampered_body,
    until_position,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_a_forged_message_id_beyond_the_head_is_passed_over_at_every_start(
    settings, parts, caplog
):
    first = create_products(settings, 3, "A")
    relay = parts.relay()
    assert await relay.relay_once() is not None
    head = first[-1]
    seq = await publish_as(parts.broker.js, parts.subject, b"{}", f"products:{head + 10}")

    with caplog.at_level(logging.WARNING, logger="eventplatform.relay"):
        for _ in range(2):  # each start of a relay process, which used to exit
            stop = asyncio.Event()
            task = asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
            more = create_products(settings, 2, "B")
            await until_position(settings.dsn, more[-1])
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            first += more

    warned = warnings_about(caplog, f"seq {seq} claims products:{head + 10}")
    assert len(warned) == 1, "one clear warning, the first time the relay meets it"
    assert settings.stream in warned[0]
    assert f"nats stream rmm {settings.stream}" in warned[0]
    assert "eventplatform audit --log products --delete-extra" in warned[0]
    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == first


async def test_a_forged_copy_of_an_unpublished_event_at_the_tail_is_not_taken_for_it(
    settings, parts
):
    # The relay published 1..2; 3..4 are stored but not yet published (the relay lags).
    ids = create_products(settings, 2, "A")
    relay = parts.relay(retry_max=0.2)
    assert await relay.relay_once() is not None
    ids += create_products(settings, 2, "B")
    # A forger's copy of event 3, other data, under its message id, at the stream's end.
    forged = tampered_body(stored_event(settings.dsn, ids[2]))
    await publish_as(parts.broker.js, parts.subject, forged, f"products:{ids[2]}")

    restarted = parts.relay(retry_max=0.2)
    restarted.position = await relay_position(settings.dsn)
    await restarted.reconcile()
    assert restarted.position == ids[1], "the forged tail moved the position past event 3"

    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))
    await until_position(settings.dsn, ids[-1], timeout=10 + 5 * WINDOW)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    content = await stream_content(settings.nats_url, settings.stream)
    assert genuine_sequences(content, settings.dsn) == ids


async def test_a_restarted_relay_resumes_before_an_event_missing_below_the_streams_end(
    settings, parts
):
    # What a relay leaves behind when someone else's message under products:3 made JetStream
    # drop its event 3 while 4 and 5 landed, and it crashed right there: its position is 2.
    ids = create_products(settings, 5)
    js = parts.broker.js
    for n in ids[:2]:
        await publish_as(
            js, parts.subject, relays_body(stored_event(settings.dsn, n)), f"products:{n}"
        )
    await publish_as(js, parts.subject, b"{}", f"products:{ids[2]}")
    for n in ids[3:]:
        await publish_as(
            js, parts.subject, relays_body(stored_event(settings.dsn, n)), f"products:{n}"
        )
    await asyncio.sleep(WINDOW + 0.2)  # all that was published long ago

    restarted = parts.relay()
    restarted.position = ids[1]
    await restarted.reconcile()
    assert restarted.position == ids[1], "the relay skipped event 3, which the stream lacks"
    await restarted.relay_once()
    assert restarted.position == ids[-1]
    content = await stream_content(settings.nats_url, settings.stream)
    assert [m.msg_id for m in content][-3:] == [f"products:{n}" for n in ids[2:]]


async def test_a_stream_holding_another_databases_history_of_the_log_is_refused_by_name(
    settings, parts
):
    seq = await publish_as(
        parts.broker.js, parts.subject, another_databases_body(99), "products:99"
    )
    with pytest.raises(StreamAheadOfLog) as refused:
        await parts.relay().reconcile()
    text = str(refused.value)
    assert f"stream {settings.stream!r} seq {seq} holds products:99" in text
    assert "which the log does not have (its head is 0)" in text
    assert "another database, or the log was reset" in text
    assert "APP_STREAM" in text
    assert f"nats stream rmm {settings.stream} {seq}" in text
    assert (refused.value.seq, refused.value.claimed) == (seq, 99)


async def test_another_databases_events_after_the_logs_own_stop_the_relay(settings, parts):
    # The same log name in two databases, one stream: the other one published after ours.
    ids = create_products(settings, 3)
    relay = parts.relay()
    assert await relay.relay_once() is not None
    for n in (ids[-1] - 1, ids[-1] + 1):  # one id this log has, one it has not yet
        await publish_as(parts.broker.js, parts.subject, another_databases_body(n), f"products:{n}")
    with pytest.raises(StreamAheadOfLog, match=r"a relay's message of another event|not have"):
        await parts.relay().reconcile()
