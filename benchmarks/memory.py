"""``memory``: peak RSS of the relay and projection processes working through a large backlog.

The backlog is COPYed into the events table (1M events in the full run). Each process is the
real one (``python -m eventplatform relay`` / ``project``); its peak RSS (``VmHWM`` in
``/proc/PID/status``) is read when it has processed 10k events and again at the end of the
backlog. Flat memory means the second is within 50 MB of the first; the "baseline" of this
figure is the process's own RSS after 10k events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.harness import (
    LOG,
    Result,
    Scale,
    copy_backlog,
    fresh_database,
    settings_for,
    template_rows,
    unique,
)
from benchmarks.latency import platform_processes
from eventplatform.store.schema import RELAY_POSITIONS, TRACKING
from projections import ProductViewProjection

EARLY = 10_000
FLAT_MB = 50.0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far, in MB (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    msg = f"no VmHWM for process {pid}: peak RSS needs Linux /proc"
    raise RuntimeError(msg)


def _follow(
    pid_alive: Callable[[], bool], position: Callable[[], int], pid: int, head: int, timeout: float
) -> tuple[float, float, float]:
    """Returns (RSS after EARLY events, RSS at the end, seconds to the end)."""
    early = 0.0
    start = time.monotonic()
    while True:
        current = position()
        if not pid_alive():
            msg = f"process {pid} died at position {current} of {head}"
            raise RuntimeError(msg)
        if not early and current >= min(EARLY, head):
            early = peak_rss_mb(pid)
        if current >= head:
            return early, peak_rss_mb(pid), time.monotonic() - start
        if time.monotonic() - start > timeout:
            msg = f"process {pid} stuck at position {current} of {head}"
            raise RuntimeError(msg)
        time.sleep(0.05)


def _position_reader(
    conn: psycopg.Connection[tuple[int]], query: sql.Composed, params: tuple[str, ...]
) -> Callable[[], int]:
    def read() -> int:
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    return read


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Relays, then projects, a large backlog in real processes, sampling their peak RSS."""
    results = []
    with fresh_database(server_dsn, "memory") as dsn:
        settings = settings_for(dsn, nats_url, unique("memory"))
        head = copy_backlog(dsn, template_rows(settings), scale.memory)
        stages = [
            (
                "relay",
                ["relay"],
                sql.SQL("SELECT position FROM {} WHERE log = %s").format(
                    sql.Identifier(RELAY_POSITIONS)
                ),
                (LOG,),
            ),
            (
                "projection",
                ["project", "projections:ProductViewProjection"],
                sql.SQL("SELECT position FROM {} WHERE projection = %s AND log = %s").format(
                    sql.Identifier(TRACKING)
                ),
                (ProductViewProjection.name, LOG),
            ),
        ]
        for name, command, query, params in stages:
            with (
                psycopg.connect(dsn, autocommit=True) as conn,
                platform_processes(settings, command) as (proc,),
            ):

                def alive(proc: Any = proc) -> bool:
                    return proc.poll() is None

                position = _position_reader(conn, query, params)
                early, end, seconds = _follow(alive, position, proc.pid, head, timeout=1200)
            results.append(
                Result(
                    "memory",
                    f"{name}, {head:,} events",
                    "MB",
                    end,
                    f"rss_after_{EARLY // 1000}k",
                    early,
                    f"within {FLAT_MB:g} MB of RSS after {EARLY // 1000}k",
                    end - early <= FLAT_MB,
                    higher_is_better=False,
                    goal=(early + FLAT_MB) / early,
                    extra={
                        "growth_mb": round(end - early, 1),
                        "events_per_s": round(head / seconds),
                    },
                )
            )
    return results
