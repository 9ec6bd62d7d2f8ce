"""Fixtures of the relay specs: settings with a short duplicate window, a relay wired by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from tests.support.platform import settings_for
from tests.support.relay import RelayParts, open_parts

#: JetStream's duplicate window in these specs, seconds: short, so "after the window" is soon.
WINDOW = 1.0


@pytest.fixture
def settings(database_dsn: str, nats_url: str, unique_name: str) -> Settings:
    """The ``products`` log in a fresh database, its own stream and subjects."""
    create_schema(database_dsn, logs=["products"])
    return settings_for(database_dsn, nats_url, unique_name, duplicate_window=WINDOW)


@pytest_asyncio.fixture
async def parts(settings: Settings) -> AsyncIterator[RelayParts]:
    """A relay's parts, connected; the stream exists."""
    p, conns = await open_parts(settings)
    try:
        yield p
    finally:
        await p.broker.close()
        for c in conns:
            await c.close()
