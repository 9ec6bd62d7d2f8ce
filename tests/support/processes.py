"""Running the ``eventplatform`` command as a real process and reading what it writes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
