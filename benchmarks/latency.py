"""``latency``: command commit → visible in the read model, at a fixed offered load.

Ours runs the real processes (``python -m eventplatform relay`` and ``project``, i.e.
``runtime.run_relay`` / ``run_projection``) while this process issues 200 create commands a
second on a fixed schedule. A command is visible when the projection's committed tracking
position reaches the command's position: the moment ``waiting.wait_for`` wakes on, observed
here by one listener on the same tracking channel (opening a ``wait_for`` connection per
command would add its connection set-up to every sample).

The peer is the seed-style polling outbox at its default 1 s interval: each command inserts
its row and an outbox row in one transaction; latency runs until a subscriber receives the
message (a lower bound for the peer: it has no projection step at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import psycopg
from psycopg import sql

from benchmarks import baselines
from benchmarks.harness import LOG, Result, Scale, fresh_database, settings_for, unique
from domain import CreateProduct, Products
from eventplatform.messagebus.nats_broker import NatsBroker, StreamSpec
from eventplatform.settings import Settings
from eventplatform.store.schema import TRACKING_CHANNEL
from eventplatform.store.waiting import wait_for
from projections import ProductViewProjection

RATE = 200.0
ROOT = Path(__file__).resolve().parent.parent


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of latency samples in milliseconds."""
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ordered[-1]}


def platform_env(settings: Settings) -> dict[str, str]:
    """Environment of a platform process on these settings."""
    env = dict(os.environ)
    env.update(
        APP_DSN=settings.require_dsn(),
        APP_NATS_URL=settings.nats_url,
        APP_STREAM=settings.stream,
        APP_SUBJECT_PREFIX=settings.subject_prefix,
        APP_LOG=settings.log,
        PYTHONPATH=str(ROOT),
    )
    return env


@contextmanager
def platform_processes(settings: Settings, *commands: list[str]) -> Iterator[list[Any]]:
    """Runs ``python -m eventplatform <command>`` processes; SIGTERMs and reaps them after."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "eventplatform", "--log-level", "WARNING", *command],
            env=platform_env(settings),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for command in commands
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class TrackingListener(threading.Thread):
    """Records when each committed projection position was announced."""

    def __init__(self, dsn: str, projection: str) -> None:
        super().__init__(daemon=True)
        self.seen: list[tuple[float, int]] = []
        self.ready = threading.Event()
        self._stop_flag = threading.Event()
        self._dsn = dsn
        self._projection = projection

    def run(self) -> None:
        """Listens until stopped."""
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TRACKING_CHANNEL)))
            self.ready.set()
            while not self._stop_flag.is_set():
                for n in conn.notifies(timeout=0.2):
                    now = time.perf_counter()
                    projection, _, position = n.payload.split(" ")
                    if projection == self._projection:
                        self.seen.append((now, int(position)))

    def stop(self) -> None:
        """Ends the loop within 0.2 s."""
        self._stop_flag.set()
        self.join()


def _paced(seconds: float) -> Iterator[int]:
    start = time.perf_counter()
    total = int(seconds * RATE)
    for i in range(total):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


def _ours(dsn: str, settings: Settings, seconds: float) -> list[float]:
    app = Products(settings)
    listener = TrackingListener(dsn, ProductViewProjection.name)
    committed: list[tuple[float, int]] = []
    try:
        with platform_processes(
            settings, ["relay"], ["project", "projections:ProductViewProjection"]
        ):
            warm = app.create(CreateProduct(name="warm", sku="W-1", price=Decimal("1.00")))
            wait_for(
                dsn,
                projection=ProductViewProjection.name,
                log=LOG,
                position=warm.position,
                timeout=60,
            )
            listener.start()
            listener.ready.wait(10)
            for i in _paced(seconds):
                result = app.create(
                    CreateProduct(name=f"l{i}", sku=f"L-{i}", price=Decimal("2.00"))
                )
                committed.append((time.perf_counter(), result.position))
            wait_for(
                dsn,
                projection=ProductViewProjection.name,
                log=LOG,
                position=committed[-1][1],
                timeout=60,
            )
            time.sleep(0.3)  # the listener's last notification is in flight
    finally:
        app.close()
        if listener.is_alive():
            listener.stop()
    samples, seen, k = [], listener.seen, 0
    for at, position in committed:
        while seen[k][1] < position:
            k += 1
        samples.append((seen[k][0] - at) * 1000)
    return samples


async def _peer(dsn: str, nats_url: str, seconds: float) -> list[float]:
    prefix = unique("outbox_latency")
    stream = StreamSpec(name=prefix.upper(), subjects=(f"{prefix}.>",))
    received: dict[str, float] = {}
    committed: dict[str, float] = {}
    with psycopg.connect(dsn) as conn:
        baselines.create_outbox(conn)
        conn.execute("CREATE TABLE business (id uuid PRIMARY KEY, name text)")
        conn.commit()
    async with NatsBroker([nats_url], name="bench-outbox") as broker:
        await broker.ensure_stream(stream)
        sub_nc = await nats.connect(nats_url)

        all_in = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            received[msg.headers["Nats-Msg-Id"]] = time.perf_counter()
            if committed and len(received) >= len(committed):
                all_in.set()

        await sub_nc.subscribe(f"{prefix}.>", cb=on_msg)
        stop = asyncio.Event()
        async with await psycopg.AsyncConnection.connect(dsn) as poll_conn:
            poller = baselines.PollingOutbox(poll_conn, broker.js, interval=1.0)
            task = asyncio.create_task(poller.run(stop))
            await asyncio.to_thread(_peer_commands, dsn, prefix, seconds, committed)
            if len(received) < len(committed):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_in.wait(), 10)
            stop.set()
            await task
        await sub_nc.close()
        await broker.js.delete_stream(stream.name)
    return [(received[m] - at) * 1000 for m, at in committed.items() if m in received]


def _peer_commands(dsn: str, prefix: str, seconds: float, committed: dict[str, float]) -> None:
    insert_outbox = sql.SQL("INSERT INTO {} (subject, msg_id, payload) VALUES (%s, %s, %s)").format(
        sql.Identifier(baselines.OUTBOX_TABLE)
    )
    with psycopg.connect(dsn) as conn:
        for i in _paced(seconds):
            key = uuid4()
            with conn.transaction():
                conn.execute("INSERT INTO business VALUES (%s, %s)", (key, f"o{i}"))
                conn.execute(insert_outbox, (f"{prefix}.Product.Created", str(key), b"{}"))
            committed[str(key)] = time.perf_counter()


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Measures ours at 200 commands/s, then the polling outbox at the same load."""
    with fresh_database(server_dsn, "latency") as dsn:
        settings = settings_for(dsn, nats_url, unique("latency"), relay_poll_interval=1.0)
        ours = percentiles(_ours(dsn, settings, scale.latency_seconds))
        peer = percentiles(asyncio.run(_peer(dsn, nats_url, scale.outbox_latency_seconds)))
    ratio_met = ours["p50_ms"] <= 0.2 * peer["p50_ms"]
    absolute_met = ours["p50_ms"] <= 10 and ours["p99_ms"] <= 50
    return [
        Result(
            "latency",
            f"{RATE:g} commands/s, p50",
            "ms",
            ours["p50_ms"],
            "polling_outbox_1s",
            peer["p50_ms"],
            "p50 ≤ 10 ms, p99 ≤ 50 ms, ≤ 0.2 of peer p50",
            ratio_met and absolute_met,
            higher_is_better=False,
            goal=0.2,
            extra={
                **{k: round(v, 2) for k, v in ours.items()},
                "baseline_p50_ms": round(peer["p50_ms"], 2),
                "baseline_p99_ms": round(peer["p99_ms"], 2),
                "baseline_max_ms": round(peer["max_ms"], 2),
            },
        )
    ]
