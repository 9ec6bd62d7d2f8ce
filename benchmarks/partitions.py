"""``partitions``: a handler whose side effect takes 5 ms, in 8 partitions over 2 processes.

Ours: ``eventplatform handle`` processes share the 8 partitions of a stream (4 each), one event
at a time per partition (``APP_CONSUMER_CONCURRENCY=1``, so the figure isolates what partitions
add). The baseline: one process, one partition, the same handler and backlog, in the same run.
Each side starts its workers, waits until they hold their partitions, then relays a backlog
and times until every event's marker row is committed. Issue 14's target: at least 6 times
the events per second of one partition.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import (
    LOG,
    Result,
    Scale,
    copy_backlog,
    fresh_database,
    relay_backlog,
    settings_for,
    template_rows,
    throughput,
    unique,
)
from domain import Product
from eventplatform.consumers import IdempotentEventHandler
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.settings import Settings
from eventplatform.store import create_schema

ROOT = Path(__file__).resolve().parents[1]
SIDE_EFFECT = 0.005
HANDLE = (sys.executable, "-m", "eventplatform", "--log-level", "WARNING", "handle")


def _slow(cur: psycopg.Cursor[Any], event: Any) -> None:
    time.sleep(SIDE_EFFECT)  # e.g. a call to another service


#: The handler both sides run (``benchmarks.partitions:SLOW``).
SLOW = IdempotentEventHandler(
    "slow",
    _slow,
    event_classes=(Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued),
)


def _handled(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM eventplatform_processed_events WHERE handler = 'slow'"
        ).fetchone()
    return int(row[0]) if row else 0


def _ready(dsn: str, nats_url: str, stream: str, partitions: int, workers: int) -> bool:
    if partitions == 1:  # no leases: ready once the handler's durable consumer exists

        async def bound() -> bool:
            async with NatsBroker([nats_url]) as broker:
                names = {c.name for c in await broker.js.consumers_info(stream)}
            return "slow" in names

        return asyncio.run(bound())
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT holder, count(*) FROM eventplatform_leases WHERE name LIKE 'handler:slow#%'"
            " AND expires_at > now() GROUP BY holder"
        ).fetchall()
    return len(rows) == workers and sum(int(r[1]) for r in rows) == partitions


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"{what} within {timeout} s"
            raise RuntimeError(msg)
        time.sleep(0.05)


def _measure(server_dsn: str, nats_url: str, events: int, partitions: int, workers: int) -> float:
    """Events per second handled by ``workers`` processes over ``partitions`` partitions."""
    with fresh_database(server_dsn, f"part{partitions}") as dsn:
        name = unique(f"part{partitions}")
        settings: Settings = settings_for(
            dsn, nats_url, name, partitions=partitions, consumer_concurrency=1
        )
        create_schema(dsn, logs=[LOG])
        copy_backlog(dsn, template_rows(settings), events)
        total = events + 3  # the backlog and the template product's three events

        async def create_stream() -> None:
            async with NatsBroker([nats_url]) as broker:
                await broker.ensure_stream(stream_spec(settings))

        asyncio.run(create_stream())
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "APP_DSN": dsn,
            "APP_NATS_URL": nats_url,
            "APP_LOG": LOG,
            "APP_STREAM": settings.stream,
            "APP_SUBJECT_PREFIX": settings.subject_prefix,
            "APP_PARTITIONS": str(partitions),
            "APP_CONSUMER_CONCURRENCY": "1",
            "APP_CONSUMER_FETCH_TIMEOUT": "0.2",
            "APP_PROJECTION_LEASE_TTL": "1",
        }
        procs = [
            subprocess.Popen(
                [*HANDLE, "benchmarks.partitions:SLOW"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            _wait(
                lambda: _ready(dsn, nats_url, settings.stream, partitions, workers),
                60,
                "the workers were not ready",
            )
            started = time.monotonic()

            async def relay() -> None:
                async with NatsBroker([nats_url]) as broker:
                    await relay_backlog(settings, broker)

            asyncio.run(relay())
            _wait(lambda: _handled(dsn) >= total, 600, "the backlog was not handled")
            return total / (time.monotonic() - started)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """One partition in one process, then 8 partitions over 2 processes, same backlog."""
    one = _measure(server_dsn, nats_url, scale.partitioned, 1, 1)
    eight = _measure(server_dsn, nats_url, scale.partitioned, 8, 2)
    return [
        throughput(
            "partitions",
            "5 ms handler, 8 partitions over 2 processes",
            eight,
            "one_partition",
            one,
            at_least=6,
        )
    ]
