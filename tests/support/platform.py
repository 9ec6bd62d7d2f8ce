"""Test support: settings per test, a counting projection, running workers in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql

from domain import Product
from eventplatform.consumers import run_projection
from eventplatform.consumers.projection import Projection
from eventplatform.relay import run_relay
from eventplatform.settings import Settings, load_settings


def settings_for(dsn: str, nats_url: str, name: str, **overrides: Any) -> Settings:
    """Settings isolated by ``name``: own stream and subject prefix on the shared NATS."""
    values = {
        "dsn": dsn,
        "log": "products",
        "nats_url": nats_url,
        "stream": name.upper(),
        "subject_prefix": name,
        "relay_poll_interval": 0.2,
        "projection_fetch_timeout": 0.2,
    }
    values.update(overrides)
    return load_settings({}, **values)


class CountingProjection(Projection):
    """Counts how often each event was applied: exactly-once means every count is 1."""

    name = "counting"
    default_table = "applied_events"
    event_classes = (Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued)

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (aggregate uuid, version int, times int NOT NULL,"
                " PRIMARY KEY (aggregate, version))"
            ).format(sql.Identifier(self.table))
        )

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} AS t VALUES (%s, %s, 1) ON CONFLICT (aggregate, version)"
                " DO UPDATE SET times = t.times + 1"
            ).format(t=sql.Identifier(self.table)),
            (event.originator_id, event.originator_version),
        )


def applied_counts(dsn: str, table: str = "applied_events") -> dict[tuple[Any, int], int]:
    """(aggregate, version) → how many times the counting projection applied it."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT aggregate, version, times FROM {}").format(sql.Identifier(table))
        ).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


@asynccontextmanager
async def running(
    settings: Settings, *projections: Projection, relay: bool = True
) -> AsyncIterator[asyncio.Event]:
    """Runs the relay and projection workers as tasks; stops them cleanly on exit."""
    stop = asyncio.Event()
    tasks = []
    if relay:
        tasks.append(asyncio.create_task(run_relay(settings, stop)))
    tasks += [asyncio.create_task(run_projection(settings, p, stop)) for p in projections]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


async def stream_messages(nats_url: str, stream: str) -> list[Any]:
    """Every message in ``stream``, in stream order."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [
            await js.get_msg(stream, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()
