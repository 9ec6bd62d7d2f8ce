"""Liveness and readiness of a platform process, as ``/healthz`` and ``/readyz`` answer them.

* **Alive** (``/healthz``): the process's event loop still turns. A task beats every second
  (:meth:`Health.heartbeat`); when no beat came for ``stall_after`` seconds the process is
  wedged (a blocking call on the loop, a deadlock) and an orchestrator should restart it.
* **Ready** (``/readyz``): every required check last reported ok: ``postgres`` and ``nats``
  (connected: the periodic probe reached them), and for processes that elect a leader,
  ``role`` (this process knows whether it leads or stands by). A standby is ready: it is
  doing its job, waiting to take over.

Reports come from the process's own components (the runners' probes); nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Check:
    """The last report of one check."""

    ok: bool
    detail: str


class Health:
    """What ``/healthz`` and ``/readyz`` answer; thread-safe (the HTTP server reads it).

    Args:
        required: the checks that must report ok for the process to be ready.
        stall_after: seconds without a heartbeat after which the process is not alive.
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        required: Sequence[str] = ("postgres", "nats"),
        *,
        stall_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.required = tuple(required)
        self.stall_after = stall_after
        self._clock = clock
        self._checks: dict[str, Check] = {}
        self._beat = clock()
        self._lock = threading.Lock()

    def report(self, check: str, ok: bool, detail: str = "") -> None:
        """Records the outcome of ``check`` (e.g. ``"postgres"``, ``"role"``)."""
        with self._lock:
            self._checks[check] = Check(ok, detail)

    def beat(self) -> None:
        """Notes that the event loop turned."""
        self._beat = self._clock()

    def alive(self) -> tuple[bool, str]:
        """Whether the loop turned within ``stall_after`` seconds, and how long ago."""
        ago = self._clock() - self._beat
        return ago < self.stall_after, f"last heartbeat {ago:.1f}s ago"

    def ready(self) -> tuple[bool, dict[str, Check]]:
        """Whether every required check reported ok; every check's last report."""
        with self._lock:
            checks = dict(self._checks)
        for name in self.required:
            checks.setdefault(name, Check(False, "not reported yet"))
        ready = all(checks[name].ok for name in self.required)
        return ready, checks

    async def heartbeat(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Beats every ``every`` seconds until ``stop`` is set (run it as a task)."""
        while not stop.is_set():
            self.beat()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                continue
