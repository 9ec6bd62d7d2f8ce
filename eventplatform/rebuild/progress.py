"""Progress of a long replay: a tqdm bar on a terminal, plain lines otherwise.

The bar counts positions done out of the range to replay (tqdm's rate and time left come from
the position rate, since holes in the ids are not events) and shows events applied and
events/s beside it. A pipe gets a plain line at most every few seconds instead, so a log file
does not fill with redrawn bars.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Never, Protocol, TextIO

from tqdm import tqdm


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
    """Writes progress to a stream: a tqdm bar when ``bar`` is true, else a line at most
    every ``interval`` seconds (and always the last one).

    Args:
        stream: where to write (e.g. ``sys.stderr``).
        bar: draw a bar in place (use ``stream.isatty()``).
        interval: seconds between plain lines.
        clock: monotonic clock for the events/s figure (tests inject one).
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
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_line = float("-inf")
        self._bar: tqdm[Never] | None = None
        if bar:
            self._bar = tqdm(file=stream, unit="pos", dynamic_ncols=True, mininterval=0.2)

    def update(self, *, phase: str, position: int, start: int, target: int, events: int) -> None:
        """Moves the bar, or prints a line when the interval has passed or it is done."""
        now = self._clock()
        rate, eta = _rates(self._started, now, position, start, target, events)
        if self._bar is not None:
            self._bar.set_description(phase, refresh=False)
            self._bar.total = max(target - start, 1)
            self._bar.n = min(max(position - start, 0), self._bar.total)
            self._bar.set_postfix_str(f"{events} events, {rate:,.0f} events/s", refresh=False)
            self._bar.refresh()
            return
        if now - self._last_line >= self._interval or position >= target:
            span = max(target - start, 1)
            fraction = min(max((position - start) / span, 0.0), 1.0)
            self._last_line = now
            self._stream.write(
                f"{phase}: position {position}/{target} ({fraction:.1%}), {events} events,"
                f" {rate:,.0f} events/s, ETA {eta}\n"
            )
            self._stream.flush()

    def close(self) -> None:
        """Ends the bar (its line is kept)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
