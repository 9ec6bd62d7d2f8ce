"""The NATS adapter: outages are logged once per episode, not once per reconnect attempt."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventplatform.messagebus.nats_broker import NatsBroker

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_a_nats_outage_is_logged_once_and_its_end_is_logged(embedded_nats, caplog):
    caplog.set_level(logging.DEBUG, logger="eventplatform.messagebus.nats_broker")
    broker = NatsBroker([embedded_nats.url])
    await broker.connect()
    try:
        embedded_nats.stop()
        await asyncio.sleep(2.0)  # several reconnect attempts at 0.5 s each
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        attempts = [r for r in caplog.records if r.levelno == logging.DEBUG]
        assert len(warnings) == 1
        assert attempts, "the later reconnect failures are still kept at debug level"
        embedded_nats.start()
        for _ in range(100):
            if broker.nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert broker.nc.is_connected
        assert any("reconnected" in r.getMessage() for r in caplog.records)
    finally:
        await broker.close()


@pytest.mark.asyncio
async def test_the_stream_gets_its_retention_limits_and_a_change_is_applied_and_logged(
    nats_url, unique_name, caplog
):
    from eventplatform.messagebus.nats_broker import StreamSpec

    name = unique_name.upper()
    spec = StreamSpec(name=name, subjects=(f"{unique_name}.>",), max_age=3600, max_bytes=1 << 20)
    async with NatsBroker([nats_url]) as broker:
        info = await broker.ensure_stream(spec)
        assert (info.config.max_age, info.config.max_bytes) == (3600, 1 << 20)
        caplog.set_level(logging.WARNING, logger="eventplatform.messagebus.nats_broker")
        longer = StreamSpec(name=name, subjects=spec.subjects, max_age=7200, max_bytes=-1)
        info = await broker.ensure_stream(longer)
        assert (info.config.max_age, info.config.max_bytes) == (7200, -1)
        assert any("retention changes" in r.getMessage() for r in caplog.records)
        await broker.js.delete_stream(name)
