"""Waits a stop request cuts short: the stop wins at once, and work gets a bounded grace."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventplatform.backoff import Stopped, until_stopped, within_grace


async def _forever() -> None:
    await asyncio.Event().wait()


async def _stubborn(cleanup_started: asyncio.Event) -> None:
    """Ignores the first cancel in its clean-up, as a release on a frozen connection would."""
    try:
        await asyncio.Event().wait()
    finally:
        cleanup_started.set()
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_work_that_finishes_first_returns_its_result():
    stop = asyncio.Event()

    async def answer() -> int:
        return 42

    assert await until_stopped(stop, answer()) == 42


@pytest.mark.asyncio
async def test_a_stop_cancels_the_work_at_once_and_says_so():
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    with pytest.raises(Stopped):
        await until_stopped(stop, _forever())
    assert time.monotonic() - started < 0.5


@pytest.mark.asyncio
async def test_a_stop_set_before_the_call_does_not_start_a_wait():
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(Stopped):
        await until_stopped(stop, _forever())


@pytest.mark.asyncio
async def test_work_that_honours_the_stop_returns_by_itself_within_the_grace():
    stop = asyncio.Event()

    async def polite() -> None:
        await stop.wait()
        await asyncio.sleep(0.05)  # finishing its batch

    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await within_grace(stop, polite(), grace=1.0) is True


@pytest.mark.asyncio
async def test_work_that_ignores_the_stop_is_cancelled_after_the_grace():
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await within_grace(stop, _forever(), grace=0.2) is False
    assert 0.2 <= time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_clean_up_that_hangs_does_not_hold_the_stop_for_ever():
    stop = asyncio.Event()
    cleanup_started = asyncio.Event()
    stop.set()
    started = time.monotonic()
    assert await within_grace(stop, _stubborn(cleanup_started), grace=0.1) is False
    assert cleanup_started.is_set()
    assert time.monotonic() - started < 2.5


@pytest.mark.asyncio
async def test_an_error_of_the_work_reaches_the_caller():
    stop = asyncio.Event()

    async def failing() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await within_grace(stop, failing(), grace=1.0)
