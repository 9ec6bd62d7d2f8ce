"""The platform's processes, started as an operator starts them, and a load to run beside them.

:class:`Processes` runs several with a log file each; :class:`Process` runs one and reads its
merged output line by line, for specs that wait on what it says or search all of it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from domain import ChangePrice, CreateProduct, Products
from eventplatform.errors import ConcurrencyConflict, StoreUnavailable
from eventplatform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class Processes:
    """``python -m eventplatform ...`` processes configured by APP_* variables."""

    def __init__(self, settings: Settings, **extra: str) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "APP_DSN": settings.dsn,
            "APP_LOG": settings.log,
            "APP_NATS_URL": settings.nats_url,
            "APP_STREAM": settings.stream,
            "APP_SUBJECT_PREFIX": settings.subject_prefix,
            "APP_RELAY_POLL_INTERVAL": "0.2",
            "APP_PROJECTION_FETCH_TIMEOUT": "0.2",
            **extra,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}

    def spawn(self, *args: str, log_dir: Path) -> subprocess.Popen[bytes]:
        """Starts ``eventplatform ARGS``; its stderr goes to a file in ``log_dir``."""
        log = log_dir / f"{args[0]}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "eventplatform", *args],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.procs.append(proc)
        self._logs[proc.pid] = log
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        """What ``proc`` wrote to stderr so far."""
        return self._logs[proc.pid].read_text(errors="replace")

    def exited(self) -> list[tuple[int, int, str]]:
        """(pid, exit status, log tail) of every process that ended by itself."""
        return [
            (p.pid, p.returncode, self.log_of(p)[-3000:])
            for p in self.procs
            if p.poll() is not None
        ]

    def stop_all(self, timeout: float = 20) -> list[int]:
        """SIGTERMs (and SIGCONTs) every live process; returns their exit statuses."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


def lease_holder(dsn: str, name: str) -> tuple[int, int] | None:
    """(pid, token) of the live holder of lease ``name``, None when nobody holds it."""
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT holder, token FROM eventplatform_leases WHERE name = %s AND expires_at > now()",
            (name,),
        ).fetchone()
    return None if row is None else (int(row[0].split(":")[1]), int(row[1]))


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05
) -> Any:
    """Polls ``condition`` (another process changes the state: there is nothing to await)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except psycopg.OperationalError:  # the database may be restarting
            last = None
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout} s (last: {last!r})")


class Load:
    """A writer thread: creates products and changes their prices until stopped.

    Outages and conflicts are retried, as a real client would; every command that returned
    counts.
    """

    def __init__(self, settings: Settings, *, pause: float = 0.002) -> None:
        self._settings = settings
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.commands = 0
        self.failures = 0

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resumed(self, commands: int = 20) -> Callable[[], bool]:
        """A condition: ``commands`` more commands succeeded than by now."""
        before = self.commands
        return lambda: self.commands > before + commands

    def stop(self) -> None:
        """Stops writing and waits for the thread."""
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        app: Products | None = None
        ids: list[Any] = []
        n = 0
        while not self._stop.is_set():
            try:
                if app is None:
                    app = Products(self._settings)
                if n % 4 == 0 or not ids:
                    ids.append(
                        app.create(
                            CreateProduct(name=f"p{n}", sku=f"S{n}", price=Decimal(n % 97 + 1))
                        ).aggregate_id
                    )
                else:
                    target = ids[n % len(ids)]
                    app.change_price(ChangePrice(product_id=target, price=Decimal(n % 89 + 1)))
                self.commands += 1
                n += 1
            except (StoreUnavailable, ConcurrencyConflict, psycopg.Error):
                self.failures += 1
                if app is not None:
                    app.close()
                app = None
                self._stop.wait(0.1)
                continue
            self._stop.wait(self._pause)
        if app is not None:
            app.close()


class Process:
    """``python -m eventplatform ARGS`` with exactly the given ``APP_*`` variables.

    Its stdout and stderr are merged and read line by line in a thread, so a spec can wait for
    a line without blocking on the pipe, and see all of it afterwards.

    Args:
        args: the command line after ``eventplatform``.
        env: ``APP_*`` (and other) variables; the caller's ``APP_*`` variables are dropped.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventplatform", *args],
            env={**base, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._fresh: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line)
                self._fresh.put(line)
        self._fresh.put(None)

    def wait_for_line(self, *needles: str, timeout: float = 30.0) -> str:
        """Returns the first new line holding every needle; fails with the output so far."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._fresh.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if all(n in line for n in needles):
                return line
        msg = f"no line with {needles!r} within {timeout}s; output:\n{self.output}"
        raise AssertionError(msg)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> float:
        """Sends ``sig`` and returns the seconds until the process exited."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout)
        self._reader.join(5)
        return time.monotonic() - started

    def finish(self, timeout: float = 60.0) -> int:
        """Waits for a process that ends by itself; returns its exit status."""
        status = self.proc.wait(timeout)
        self._reader.join(5)
        return status

    @property
    def output(self) -> str:
        """Everything it wrote so far (stdout and stderr)."""
        return "".join(self.lines)

    def kill(self) -> None:
        """Kills it if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
