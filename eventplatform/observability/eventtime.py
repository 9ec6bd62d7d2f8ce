"""Event times as seconds since the epoch, cheaply: event age is computed for every event.

eventsourcing stamps events in UTC (``2026-11-24T17:42:00.810123+00:00``). Within a batch most
events share their minute, so the minute is parsed once and cached; the seconds are a float.
Any other RFC 3339 form falls back to :meth:`datetime.fromisoformat`.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

_UTC_SUFFIXES = ("+00:00", "Z")


@lru_cache(maxsize=64)
def _minute(prefix: str) -> float:
    return datetime.fromisoformat(prefix + ":00+00:00").timestamp()


def epoch_of(time: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, None when it is not one.

    Args:
        time: e.g. ``2026-11-24T17:42:00.810123+00:00`` (``Z`` and other offsets accepted).
    """
    try:
        if len(time) >= 19 and time[16] == ":" and time.endswith(_UTC_SUFFIXES):
            end = -1 if time[-1] == "Z" else -6
            return _minute(time[:16]) + float(time[17:end])
        return datetime.fromisoformat(time).timestamp()
    except ValueError:
        return None
