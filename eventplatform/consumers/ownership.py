"""Sharing a consumer's partitions among its live workers, without a coordinator.

Every worker process of a partitioned consumer (a projection or a handler) holds two kinds of
lease in ``eventplatform_leases``:

* a **membership** lease, ``members:<consumer>/<holder>``, renewed while it runs: the live
  members are the live membership leases;
* a **partition** lease per partition it serves, ``<kind>:<consumer>#<k>/<n>``, with the
  fencing token every commit of that partition passes.

Each worker, every ``poll`` seconds, reads the live members, computes its fair share (``n //
m``, one more for the first ``n % m`` members in holder order), gives back partitions above
its share (the serving task finishes its batch and releases the lease) and takes free or
expired ones up to it, starting at an offset of its own so that workers do not all contend for
partition 0. A worker that joins takes partitions as the others give them back; one that
dies, hangs or is cut off loses its leases after their ttl and the others take them over.
Shares are computed from snapshots that may differ for a moment: the partition leases, not the
arithmetic, make sure a partition is served by one worker at a time, and its fence makes sure
that only that worker's commits land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from eventplatform.backoff import sleep_or_stop
from eventplatform.consumers.faults import is_fault
from eventplatform.leases.leadership import (
    Leadership,
    Lease,
    LeaseConfig,
    LeaseLost,
    PostgresLeases,
)

logger = logging.getLogger(__name__)

#: Serves partition ``k`` while ``stop`` is unset and the lease holds; given the leadership.
Serve = Callable[[int, Leadership, asyncio.Event], Awaitable[None]]


def fair_share(partitions: int, members: list[str], me: str) -> int:
    """How many of ``partitions`` the member ``me`` serves among ``members``."""
    everyone = sorted({*members, me})
    index = everyone.index(me)
    base, extra = divmod(partitions, len(everyone))
    return base + (1 if index < extra else 0)


def member_prefix(consumer: str) -> str:
    """The name prefix of a consumer's membership leases."""
    return f"members:{consumer}/"


@dataclass(slots=True)
class _Serving:
    task: asyncio.Task[None]
    stop: asyncio.Event
    leadership: Leadership


@dataclass(slots=True)
class PartitionOwnership:
    """Takes, serves and gives back partitions of one consumer (see the module).

    Args:
        leases: the lease store (one connection is enough for every lease of the process).
        consumer: the consumer's name (projection or handler).
        partitions: how many partitions it has.
        lease_name: the lease name of partition ``k``.
        holder: this process's holder id.
        config: lease timing; the share is revisited every ``config.poll_every`` seconds.
        serve: runs partition ``k``'s worker.
    """

    leases: PostgresLeases
    consumer: str
    partitions: int
    lease_name: Callable[[int], str]
    holder: str
    config: LeaseConfig
    serve: Serve
    serving: dict[int, _Serving] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        """Shares the partitions until ``stop`` is set; then stops every partition cleanly.

        Raises:
            StoreUnavailable: PostgreSQL is away (every partition has been stopped first).
        """
        member = Leadership(
            self.leases,
            member_prefix(self.consumer) + self.holder,
            holder=self.holder,
            config=self.config,
        )
        if await member.acquire(stop) is None:
            return
        keeper = asyncio.create_task(member.keep())
        try:
            while not stop.is_set():
                member.check()
                await self._rebalance()
                await sleep_or_stop(stop, self.config.poll_every)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._stop_all()
            await member.release()

    async def _rebalance(self) -> None:
        for k, serving in list(self.serving.items()):
            if serving.task.done():  # lost its lease, or an outage: give it up, maybe retake it
                del self.serving[k]
                error = None if serving.task.cancelled() else serving.task.exception()
                if error is None:
                    continue
                if not (isinstance(error, LeaseLost) or is_fault(error)):
                    raise error  # a defect or a configuration error: stop, as one worker would
                logger.warning("partition %d of %s stopped: %s", k, self.consumer, error)
        members = list((await self.leases.live(member_prefix(self.consumer))).values())
        share = fair_share(self.partitions, members, self.holder)
        for k in sorted(self.serving, reverse=True)[: max(0, len(self.serving) - share)]:
            logger.info("%s gives partition %d of %s back", self.holder, k, self.consumer)
            await self._stop(k)
        if len(self.serving) >= share:
            return
        start = sorted({*members, self.holder}).index(self.holder) * self.partitions
        start //= max(1, len(set(members) | {self.holder}))
        for offset in range(self.partitions):
            if len(self.serving) >= share:
                break
            k = (start + offset) % self.partitions
            if k in self.serving:
                continue
            lease = await self.leases.try_acquire(self.lease_name(k), self.holder, self.config.ttl)
            if lease is not None:
                self._start(k, lease)

    def _start(self, k: int, lease: Lease) -> None:
        leadership = Leadership.holding(self.leases, lease, config=self.config)
        stop = asyncio.Event()

        async def serve() -> None:
            keeper = asyncio.create_task(leadership.keep())
            try:
                await self.serve(k, leadership, stop)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await leadership.release()

        logger.info(
            "%s serves partition %d of %s (lease token %d)",
            self.holder,
            k,
            self.consumer,
            lease.token,
        )
        self.serving[k] = _Serving(asyncio.create_task(serve()), stop, leadership)

    async def _stop(self, k: int) -> None:
        serving = self.serving.pop(k)
        serving.stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await serving.task

    async def _stop_all(self) -> None:
        for k in list(self.serving):
            self.serving[k].stop.set()
        for k in list(self.serving):
            await self._stop(k)
