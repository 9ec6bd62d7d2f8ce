"""Fixtures the consumer specs share; each module provides its own ``dsn`` (schema + tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from psycopg_pool import ConnectionPool

from eventplatform.messagebus.nats_broker import NatsBroker


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool[Any]]:
    """A small pool on the module's prepared database."""
    with ConnectionPool(dsn, min_size=1, max_size=4) as pool:
        yield pool


@pytest_asyncio.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    """A connected broker on the session's NATS."""
    async with NatsBroker([nats_url]) as broker:
        yield broker
