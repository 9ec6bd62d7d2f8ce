"""Group commit: the commands that arrive while a transaction is under way share the next one.

Why: every transaction that appends to a log takes the table's EXCLUSIVE lock and holds it until
its commit record is flushed to disk (DESIGN invariant 1: that is what keeps notification ids in
commit order). So transactions on one log run strictly one after the other, and a process whose
threads each commit their own command is bounded by one WAL flush per command, however many
threads it has. Here the threads of one process hand their commands to whichever thread is
writing: while one group is in its transaction, the next group gathers, and then goes in one
transaction, one lock, one flush. A lone writer sees no delay: it finds nobody writing and writes
its own command at once (no timer, no background thread).

This module is only the hand-over; what a "write" is (and how one command's failure is kept
from failing the others) belongs to the :class:`GroupWriter` it is given.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from eventplatform.errors import CommitOutcomeUnknown

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class GroupWriter(Protocol[T_contra, R_co]):
    """Writes a group of items in one go (for the store: one transaction)."""

    def write(self, items: Sequence[T_contra]) -> Sequence[R_co | Exception]:
        """Writes ``items``; returns one outcome per item, in order.

        An outcome is the item's result or the exception that item alone failed with (a
        distinct instance per item: each is raised in its own caller's thread).
        """
        ...


@dataclass(slots=True, eq=False)
class _Pending(Generic[T, R]):
    item: T
    weight: int
    done: bool = False
    result: R | None = None
    error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # R itself may include None


class GroupCommitter(Generic[T, R]):
    """Lets concurrent threads submit items that are written in groups by one of them.

    The first thread to find nobody writing becomes the leader: it takes the items queued so
    far, in arrival order and up to ``max_weight``, writes them as one group, hands each
    submitter its outcome, and goes on until its own item is written. Threads that arrive
    meanwhile queue and wait; when the leader is done, one of them leads the next group.
    Arrival order is kept, so no item is overtaken by one submitted after it.

    Args:
        writer: writes one group; called by one thread at a time.
        weigh: an item's weight (for the store: its number of events); default 1.
        max_weight: most weight per group; an item heavier than this goes alone.
    """

    def __init__(
        self,
        writer: GroupWriter[T, R],
        *,
        weigh: Callable[[T], int] = lambda _: 1,
        max_weight: int = 1000,
    ) -> None:
        if max_weight < 1:
            msg = f"max_weight must be at least 1, got {max_weight}"
            raise ValueError(msg)
        self._writer = writer
        self._weigh = weigh
        self._max_weight = max_weight
        self._changed = threading.Condition()
        self._queue: deque[_Pending[T, R]] = deque()
        self._leading = False
        self.groups = 0
        """Groups written so far (for benchmarks and specs: items / groups = mean group size)."""

    @property
    def pending(self) -> int:
        """Items queued and not yet taken into a group (a gauge; specs wait on it)."""
        with self._changed:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """Writes ``item`` (in a group with whatever else is waiting) and returns its result.

        Raises:
            Exception: the error the writer reported for this item.
            CommitOutcomeUnknown: the writer itself failed unexpectedly (a bug) while writing
                the group this item was in; the thread that was writing gets the original
                exception instead.
        """
        mine: _Pending[T, R] = _Pending(item, self._weigh(item))
        with self._changed:
            self._queue.append(mine)
            while self._leading and not mine.done:
                self._changed.wait()
            if mine.done:
                return mine.outcome()
            self._leading = True
        try:
            while not mine.done:
                with self._changed:
                    group = self._take()
                self._write(group, mine)
        finally:
            with self._changed:
                self._leading = False
                self._changed.notify_all()
        return mine.outcome()

    def _take(self) -> list[_Pending[T, R]]:
        group = [self._queue.popleft()]
        weight = group[0].weight
        while self._queue and weight + self._queue[0].weight <= self._max_weight:
            weight += self._queue[0].weight
            group.append(self._queue.popleft())
        return group

    def _write(self, group: list[_Pending[T, R]], leader: _Pending[T, R]) -> None:
        self.groups += 1
        try:
            outcomes = list(self._writer.write([p.item for p in group]))
            if len(outcomes) != len(group):
                msg = f"the writer returned {len(outcomes)} outcomes for {len(group)} items"
                raise RuntimeError(msg)
        except BaseException as e:
            # A bug or an interrupt in the writer: whether the group was written is unknown.
            # Every other submitter in the group gets an error of its own, chained to this one;
            # the leader's thread raises the original. If the leader's own item was still
            # queued behind this group, it is withdrawn: never written, and its caller has
            # the error (an item must never end up with both, or with neither).
            with self._changed:
                for p in group:
                    if p is not leader:
                        p.error = _unknown(e)
                        p.done = True
                if leader not in group:
                    self._queue.remove(leader)
                self._changed.notify_all()
            raise
        with self._changed:
            for p, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    p.error = outcome
                else:
                    p.result = outcome
                p.done = True
            self._changed.notify_all()


def _unknown(cause: BaseException) -> CommitOutcomeUnknown:
    error = CommitOutcomeUnknown(
        f"writing the group this command was in failed unexpectedly ({cause!r}); "
        "its events may or may not be stored"
    )
    error.__cause__ = cause
    return error
