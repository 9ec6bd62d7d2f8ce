"""Progress of a long replay: a bar on a terminal, plain lines otherwise.

The bar shows positions done out of the range to replay, events applied, events/s and an
estimate of the time left (from the position rate, since holes in the ids are not events).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TextIO


class Progress(Protocol):
    """Receives replay progress; structural so that tests and tools can pass any object."""

    def update(self, *, phase: str, position: int, start: int, target: int, events: int) -> None:
        """Reports that ``phase`` has reached ``position`` of ``start..target``."""

    def close(self) -> None:
        """Ends the report (a newline after a bar)."""


class NoProgress:
    """Reports nothing."""

    def update(self, *, phase: str, position: int, start: int, target: int, events: int) -> None:
        """Does nothing."""

    def close(self) -> None:
        """Does nothing."""


def _rates(
    started: float, now: float, position: int, start: int, target: int, events: int
) -> tuple[float, str]:
    elapsed = max(now - started, 1e-9)
    rate = events / elapsed
    positions_rate = (position - start) / elapsed
    remaining = max(target - position, 0)
    eta = f"{remaining / positions_rate:.0f}s" if positions_rate > 0 else "?"
    return rate, eta


class StreamProgress:
    """Writes progress to a stream: a redrawn bar when ``bar`` is true, else a line at most
    every ``interval`` seconds (and always the last one).

    Args:
        stream: where to write (e.g. ``sys.stderr``).
        bar: draw a bar in place (use ``stream.isatty()``).
        interval: seconds between plain lines.
        clock: monotonic clock (tests inject one).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        bar: bool,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._bar = bar
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_line = float("-inf")
        self._drawn = False

    def update(self, *, phase: str, position: int, start: int, target: int, events: int) -> None:
        """Redraws the bar, or prints a line when the interval has passed or it is done."""
        now = self._clock()
        rate, eta = _rates(self._started, now, position, start, target, events)
        span = max(target - start, 1)
        fraction = min(max((position - start) / span, 0.0), 1.0)
        if self._bar:
            width = 30
            filled = int(fraction * width)
            self._stream.write(
                f"\r{phase:<9} [{'#' * filled}{'.' * (width - filled)}] {fraction:6.1%}"
                f"  {events} events  {rate:,.0f}/s  ETA {eta}  "
            )
            self._stream.flush()
            self._drawn = True
            return
        if now - self._last_line >= self._interval or position >= target:
            self._last_line = now
            self._stream.write(
                f"{phase}: position {position}/{target} ({fraction:.1%}), {events} events,"
                f" {rate:,.0f} events/s, ETA {eta}\n"
            )
            self._stream.flush()

    def close(self) -> None:
        """Ends the bar's line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
