"""Waiting between attempts: full-jitter back-off and a sleep that a stop request cuts short.

Every long-running part (relay, leases, consumers) retries infrastructure failures with these,
so they live beside ``settings`` and ``errors`` rather than in one part.
"""

from __future__ import annotations

import asyncio
import random


def backoff(failures: int, initial: float, cap: float) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(cap, initial * 2**(n-1))].

    Full jitter spreads the retries of many clients that failed together, so a recovering
    server is not hit by all of them at once.
    """
    return random.uniform(0, min(cap, initial * 2 ** (failures - 1)))


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleeps ``delay`` seconds, or less when ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return
