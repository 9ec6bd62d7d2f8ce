"""Group commit: concurrent submitters share writes, and each still gets its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from eventplatform.errors import CommitOutcomeUnknown, ConcurrencyConflict
from eventplatform.store.group_commit import GroupCommitter


class RecordingWriter:
    """Writes by remembering each group; an item ``"conflict:..."`` fails alone.

    ``hold`` (when set) keeps the first write waiting until it is released, so that the
    next group can gather meanwhile.
    """

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold: threading.Event | None = None
        self.writing = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def write(self, items: Sequence[str]) -> list[str | Exception]:
        with self._lock:
            self.writing += 1
            self.overlapped |= self.writing > 1
        try:
            if self.hold is not None and not self.groups:
                self.hold.wait(timeout=10)
            self.groups.append(list(items))
            return [
                ConcurrencyConflict(item) if item.startswith("conflict") else f"stored {item}"
                for item in items
            ]
        finally:
            with self._lock:
                self.writing -= 1


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits for a state of another thread that no event announces."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def pending_is(committer: GroupCommitter[str, str], n: int) -> Callable[[], bool]:
    return lambda: committer.pending == n


def submit_in_threads(
    committer: GroupCommitter[str, str], items: Sequence[str]
) -> tuple[list[threading.Thread], dict[str, object]]:
    outcomes: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            outcomes[item] = committer.submit(item)
        except Exception as e:
            outcomes[item] = e

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for t in threads:
        t.start()
    return threads, outcomes


def test_a_lone_submitter_writes_its_item_at_once_in_a_group_of_its_own():
    writer = RecordingWriter()
    committer: GroupCommitter[str, str] = GroupCommitter(writer)

    assert committer.submit("a") == "stored a"
    assert committer.submit("b") == "stored b"
    assert writer.groups == [["a"], ["b"]]


def test_items_submitted_while_a_group_is_written_go_together_in_the_next_group():
    writer = RecordingWriter()
    writer.hold = threading.Event()
    committer: GroupCommitter[str, str] = GroupCommitter(writer)
    first, first_outcome = submit_in_threads(committer, ["first"])
    until(lambda: writer.writing == 1)

    rest, outcomes = submit_in_threads(committer, [f"item{i}" for i in range(11)])
    until(lambda: committer.pending == 11)
    writer.hold.set()
    for t in first + rest:
        t.join()

    assert writer.groups[0] == ["first"]
    assert sorted(writer.groups[1]) == sorted(f"item{i}" for i in range(11))
    assert committer.groups == 2
    assert outcomes == {f"item{i}": f"stored item{i}" for i in range(11)}
    assert first_outcome == {"first": "stored first"}


def test_one_items_error_is_raised_to_its_own_submitter_only():
    writer = RecordingWriter()
    writer.hold = threading.Event()
    committer: GroupCommitter[str, str] = GroupCommitter(writer)
    first, _ = submit_in_threads(committer, ["first"])
    until(lambda: writer.writing == 1)

    rest, outcomes = submit_in_threads(committer, ["a", "conflict-b", "c"])
    until(lambda: committer.pending == 3)
    writer.hold.set()
    for t in first + rest:
        t.join()

    assert len(writer.groups) == 2
    assert outcomes["a"] == "stored a"
    assert outcomes["c"] == "stored c"
    assert isinstance(outcomes["conflict-b"], ConcurrencyConflict)


def test_a_group_never_outweighs_the_limit_and_a_heavier_item_goes_alone():
    writer = RecordingWriter()
    writer.hold = threading.Event()
    committer: GroupCommitter[str, str] = GroupCommitter(writer, weigh=len, max_weight=6)
    first, _ = submit_in_threads(committer, ["x"])
    until(lambda: writer.writing == 1)

    items = ["aa", "bb", "cc", "dddddddd", "ee"]  # weights 2, 2, 2, 8, 2
    rest: list[threading.Thread] = []
    for item in items:  # one by one, so they queue in this order
        threads, _ = submit_in_threads(committer, [item])
        rest += threads
        until(pending_is(committer, len(rest)))
    writer.hold.set()
    for t in first + rest:
        t.join()

    assert writer.groups == [["x"], ["aa", "bb", "cc"], ["dddddddd"], ["ee"]]


def test_many_concurrent_submitters_each_get_their_own_result_written_exactly_once():
    writer = RecordingWriter()
    committer: GroupCommitter[str, str] = GroupCommitter(writer)
    results: dict[str, str] = {}

    def submitter(w: int) -> None:
        for i in range(200):
            item = f"w{w}-{i}"
            results[item] = committer.submit(item)

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    written = [item for group in writer.groups for item in group]
    assert sorted(written) == sorted(results)
    assert len(written) == 12 * 200
    assert all(results[item] == f"stored {item}" for item in results)
    assert not writer.overlapped, "two groups were written at the same time"


class FailingWriter:
    """A writer with a bug: it raises instead of returning outcomes."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.calls: list[list[str]] = []

    def write(self, items: Sequence[str]) -> list[str | Exception]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.hold.wait(timeout=10)
            return ["stored"]
        raise RuntimeError("bug in the writer")


def test_a_writer_that_breaks_fails_its_group_as_unknown_and_no_submitter_is_left_hanging():
    writer = FailingWriter()
    committer: GroupCommitter[str, str] = GroupCommitter(writer)
    first, _ = submit_in_threads(committer, ["first"])
    until(lambda: len(writer.calls) == 1)
    rest, outcomes = submit_in_threads(committer, ["a", "b", "c"])
    until(lambda: committer.pending == 3)
    writer.hold.set()
    for t in first + rest:
        t.join()

    errors = list(outcomes.values())
    assert sum(isinstance(e, RuntimeError) for e in errors) == 1  # the thread that wrote
    unknown = [e for e in errors if isinstance(e, CommitOutcomeUnknown)]
    assert len(unknown) == 2
    assert all(isinstance(e.__cause__, RuntimeError) for e in unknown)
    assert committer.pending == 0
    with pytest.raises(RuntimeError):
        committer.submit("after")  # the committer still works (and the writer still fails)
