"""Waiting: full-jitter back-off, and waits that a stop request cuts short.

Every long-running part (relay, leases, consumers) retries infrastructure failures with these,
so they live beside ``settings`` and ``errors`` rather than in one part.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

from eventplatform.errors import EventPlatformError

T = TypeVar("T")


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


#: Seconds a worker gets, after a stop request, to finish what it is doing before the rest is
#: cancelled (SIGTERM/SIGINT are honoured within about this, in every state).
STOP_GRACE = 1.0


class Stopped(EventPlatformError):
    """``stop`` was set before the awaited work finished; the work was cancelled."""


async def until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """Runs ``work`` until it finishes or ``stop`` is set, whichever comes first.

    For waits that cannot take ``stop`` themselves (a library's connect, a request with a
    long timeout): the work is cancelled the moment ``stop`` is set.

    Returns:
        What ``work`` returned.

    Raises:
        Stopped: ``stop`` was set first (also when it was set before the call).
    """
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await _cancel(task)
    if task.cancelled():
        if stop.is_set():
            raise Stopped
        raise asyncio.CancelledError
    return task.result()


async def _cancel(task: asyncio.Future[Any], patience: float = 0.5) -> None:
    """Cancels ``task`` unless done, and waits until it has unwound.

    A task whose clean-up awaits something that hangs (a release on a frozen connection) is
    cancelled again there, up to three times, ``patience`` seconds apart; then it is left to
    the event loop's shutdown rather than holding up the stop.
    """
    for _ in range(3):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=patience)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the caller asked for a cancel, not for this outcome


async def within_grace(stop: asyncio.Event, work: Coroutine[Any, Any, None], grace: float) -> bool:
    """Runs ``work``; once ``stop`` is set, gives it ``grace`` seconds to return, then cancels.

    Work that honours ``stop`` finishes cleanly within the grace; work stuck in a wait that
    does not (a broker ack, a half-dead connection) is cancelled, which the platform's
    invariants make safe (a process may stop at any instant: what was not recorded is redone).

    Returns:
        True when ``work`` returned by itself, False when it was cancelled after the grace.
    """
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace)
    finally:
        stopping.cancel()
        finished = task.done()
        await _cancel(task)
    if finished and not task.cancelled():
        task.result()  # re-raises what the work raised
        return True
    return False
