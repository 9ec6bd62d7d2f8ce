"""Acknowledging JetStream messages: after the commit, and in-progress while work is slow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import nats.errors
from nats.aio.msg import Msg

logger = logging.getLogger(__name__)


def stored_at(msg: Msg) -> float | None:
    """When JetStream stored ``msg``, seconds since the epoch; None if the reply subject does
    not say.

    Read from the ack reply subject's timestamp token alone: ``msg.metadata`` parses every
    token and builds a datetime, several microseconds a message on the projection's hot path.
    """
    reply = msg.reply
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    index = 7 if len(tokens) == 9 else 9 if len(tokens) >= 11 else -1
    if index < 0 or not tokens[index].isdigit():
        return None
    return int(tokens[index]) / 1e9


async def ack_all(msgs: Sequence[Msg]) -> None:
    """Acks messages whose outcome is committed; a lost ack only causes a redelivery.

    A redelivered message is absorbed by the consumer's own state (tracked position,
    processed-event marker or dead-letter row), so a failed ack is logged, not raised.
    """
    results = await asyncio.gather(*(m.ack() for m in msgs), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        logger.warning("%d acks failed (they will be redelivered): %r", len(failed), failed[0])


async def nak_all(msgs: Sequence[Msg], *, delay: float) -> None:
    """Asks JetStream to deliver ``msgs`` again after ``delay`` seconds (they were not
    settled: e.g. beyond what a batch may fill from the store); a lost nak only delays them
    until ``ack_wait``."""
    results = await asyncio.gather(*(m.nak(delay=delay) for m in msgs), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        logger.warning("%d naks failed (redelivered after ack_wait): %r", len(failed), failed[0])


@contextlib.asynccontextmanager
async def keep_alive(msgs: Sequence[Msg], interval: float) -> AsyncIterator[None]:
    """Sends in-progress acks for ``msgs`` every ``interval`` seconds while the body runs.

    A slow handler or a batch waiting out a retry back-off thereby keeps its messages
    instead of having JetStream redeliver them (to itself, out of order) after ``ack_wait``.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(m.in_progress() for m in msgs), return_exceptions=True)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
            await task
