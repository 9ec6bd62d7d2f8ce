"""Relay processes killed with SIGKILL during a load: a standby takes over, nothing is lost or
published twice; SIGTERM ends a relay cleanly (exit 0) and hands the lease over at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import nats
import orjson
import psycopg
import pytest

from domain import CreateProduct, Products
from eventplatform.cli.status import read_status
from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from tests.support.platform import settings_for

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def settings(database_dsn, nats_url, unique_name) -> Settings:
    create_schema(database_dsn, logs=["products"])
    return settings_for(database_dsn, nats_url, unique_name, relay_batch_size=50)


class Relays:
    """``python -m eventplatform relay`` processes, configured by APP_* variables."""

    def __init__(self, settings: Settings) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "APP_DSN": settings.dsn,
            "APP_LOG": settings.log,
            "APP_NATS_URL": settings.nats_url,
            "APP_STREAM": settings.stream,
            "APP_SUBJECT_PREFIX": settings.subject_prefix,
            "APP_RELAY_POLL_INTERVAL": str(settings.relay_poll_interval),
            "APP_RELAY_BATCH_SIZE": str(settings.relay_batch_size),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventplatform", "relay"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def by_pid(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.procs if p.pid == pid)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stderr:
                p.stderr.close()


def lease(dsn: str) -> tuple[int, int] | None:
    """(pid, token) of the live leader, or None."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT holder, token FROM eventplatform_leases WHERE expires_at > now()"
        ).fetchone()
    if row is None:
        return None
    return int(row[0].split(":")[1]), int(row[1])


def wait_for_leader(dsn: str, *, newer_than: int = 0, timeout: float = 15) -> tuple[int, int]:
    """Polls the lease table (another process writes it: there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = lease(dsn)
        if current is not None and current[1] > newer_than:
            return current
        time.sleep(0.05)
    raise AssertionError(f"no relay took the lease over within {timeout} s")


def relay_position(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT position FROM eventplatform_relay_positions").fetchone()
    return int(row[0]) if row else 0


def wait_for_position(dsn: str, position: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while relay_position(dsn) < position:
        assert time.monotonic() < deadline, f"relay stuck at {relay_position(dsn)} < {position}"
        time.sleep(0.05)


def log_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT notification_id FROM products_events ORDER BY 1").fetchall()
    return [int(r[0]) for r in rows]


async def stream_sequences(url: str, stream: str) -> list[int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [
            int(orjson.loads((await js.get_msg(stream, seq)).data or b"{}")["sequence"])
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


def test_killing_the_leader_repeatedly_during_a_load_loses_and_repeats_nothing(settings):
    relays = Relays(settings)
    app = Products(settings)
    writing = threading.Event()
    written: list[int] = []

    def writer() -> None:
        i = 0
        while writing.is_set() or i < 300:
            written.append(
                app.create(CreateProduct(name=f"P{i}", sku=f"S{i}", price=Decimal(1))).position
            )
            i += 1

    try:
        for _ in range(3):
            relays.spawn()
        pid, token = wait_for_leader(settings.dsn)
        writing.set()
        thread = threading.Thread(target=writer)
        thread.start()
        takeovers = []
        for _ in range(2):
            wait_for_position(settings.dsn, relay_position(settings.dsn) + 1)
            killed_at = time.monotonic()
            relays.by_pid(pid).send_signal(signal.SIGKILL)
            pid, token = wait_for_leader(settings.dsn, newer_than=token)
            takeovers.append(time.monotonic() - killed_at)
            relays.spawn()  # a replacement standby, as a supervisor would start
        writing.clear()
        thread.join()
        ids = log_ids(settings.dsn)
        assert ids == written
        wait_for_position(settings.dsn, ids[-1])

        # Leadership moved within the lease's bound (3 s ttl + 1 s poll), with slack for CI.
        assert all(t < 8 for t in takeovers), takeovers
        sequences = asyncio.run(stream_sequences(settings.nats_url, settings.stream))
        assert len(sequences) == len(set(sequences)), "an event was published twice"
        assert sequences == ids

        # SIGTERM: every surviving relay exits 0 and the leader releases its lease at once.
        survivors = [p for p in relays.procs if p.poll() is None]
        assert len(survivors) == 3
        for p in survivors:
            p.send_signal(signal.SIGTERM)
        for p in survivors:
            assert p.wait(timeout=15) == 0, p.stderr.read().decode() if p.stderr else ""
        assert read_status(settings.dsn, ["products"]).logs[0].leader is None
    finally:
        writing.clear()
        relays.close()
        app.close()


def test_a_hung_leader_is_replaced_and_steps_down_when_it_wakes_up(settings):
    relays = Relays(settings)
    app = Products(settings)
    try:
        relays.spawn()
        pid, token = wait_for_leader(settings.dsn)
        relays.spawn()
        first = [
            app.create(CreateProduct(name=f"A{i}", sku=f"A{i}", price=Decimal(1))).position
            for i in range(50)
        ]
        wait_for_position(settings.dsn, first[-1])
        hung = relays.by_pid(pid)
        hung.send_signal(signal.SIGSTOP)  # hangs: no renewal, no crash, connections open
        new_pid, _ = wait_for_leader(settings.dsn, newer_than=token)
        assert new_pid != pid
        more = [
            app.create(CreateProduct(name=f"B{i}", sku=f"B{i}", price=Decimal(1))).position
            for i in range(50)
        ]
        wait_for_position(settings.dsn, more[-1])
        hung.send_signal(signal.SIGCONT)  # wakes up late, believing it still leads
        last = [
            app.create(CreateProduct(name=f"C{i}", sku=f"C{i}", price=Decimal(1))).position
            for i in range(50)
        ]
        wait_for_position(settings.dsn, last[-1])
        current = lease(settings.dsn)
        assert current is not None
        assert current[0] == new_pid, "the woken relay took the lease back"
        sequences = asyncio.run(stream_sequences(settings.nats_url, settings.stream))
        assert sequences == first + more + last
        assert hung.poll() is None, "the woken relay should stand by, not exit"
    finally:
        relays.close()
        app.close()
