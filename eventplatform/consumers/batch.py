"""One projection batch as one PostgreSQL transaction: verify, apply, dead-letter, move, fence.

The order inside the transaction, and why:

1. ``idle_in_transaction_session_timeout`` is set for this transaction: a worker that hangs
   in the middle of a batch (SIGSTOP, a frozen VM) is cut off by PostgreSQL, and the row locks
   it holds go with it, so a standby that took the lease over is not blocked for long.
2. Every readable message is checked against the event store
   (:mod:`~eventplatform.consumers.verification`). A forged one is dead-lettered: it never
   parks an aggregate and never moves a position. A genuine one at or below the committed
   position is skipped (a redelivery, a republish).
3. The genuine events are put in log order, and no position moves past an event the batch
   did not carry: the stored events between the committed position and the highest position
   the batch carries that it lacks (a genuine later event replayed early, a stream that lost
   messages) are read from the store and applied in their place. What lies beyond a bounded
   window is deferred: negatively acknowledged, delivered again later.
4. The genuine events are planned in order (apply, park behind an open dead letter of their
   aggregate, or dead-letter and park as the head of their aggregate), applied in one
   savepoint, or one savepoint per event when the batch fails, to find what fails.
5. The positions move by compare-and-set from where this worker started, and the stream
   cursor moves past every message the batch settled.
6. Last, just before the commit, the lease fence: the token must still be the lease's, and the
   lease row stays locked until the commit, so a takeover waits for it or refuses it.

Nothing a message carries can make a statement of this transaction fail: its text is
validated at intake (:func:`~eventplatform.messagebus.cloudevents.decode`) or stored as bytea,
and the dead-letter insert has a minimal fallback. What still fails is the projection's own
code, which the savepoints isolate per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import psycopg.errors
from nats.aio.msg import Msg
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventplatform.consumers.dead_letters import PostgresDeadLetters, is_dead_letter_subject
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.faults import IN_TRANSACTION_ERRORS
from eventplatform.consumers.intake import Intake, read_message
from eventplatform.consumers.parking import PostgresParking
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import is_transient
from eventplatform.consumers.tracking import (
    PostgresConsumerCursors,
    PostgresTracking,
    TrackedPosition,
)
from eventplatform.consumers.verification import StoreVerifier
from eventplatform.errors import ProjectionError, StoreUnavailable
from eventplatform.leases.fence import Fence, FencedOff, NoFence
from eventplatform.leases.leadership import LeaseLost
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.partitions import partition_label, partition_of
from eventplatform.store.postgres import translate

logger = logging.getLogger(__name__)

#: ``(dead letter id, consumer, subject, body, error, attempts)``: what is announced on NATS.
Letter = tuple[int, str, str | None, bytes, str, int]


@dataclass(slots=True)
class BatchResult:
    """What one batch did.

    Attributes:
        received: messages fetched.
        applied: events applied to the read model.
        skipped: events at or below the position (redeliveries, republishes).
        dead_lettered: messages dead-lettered (unreadable, forged, or failing to apply).
        forged: of those, messages whose claims the event store contradicts.
        parked: events parked behind their aggregate's open dead letter.
        positions: the new position per log after the batch.
        filled: events the batch lacked, read from the store and applied in their place.
        deferred: indexes of messages beyond the fill window, to be delivered again later
            (negatively acknowledged, not acknowledged).
        applied_events: the envelope of each applied event and its message's index (None
            for an event filled in from the store): for event ages and trace spans.
        began_ns: when the batch transaction began (``time.time_ns()``).
        committed_ns: when it committed.
    """

    received: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    forged: int = 0
    parked: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    filled: int = 0
    deferred: list[int] = field(default_factory=list)
    applied_events: list[tuple[CloudEvent, int | None]] = field(default_factory=list)
    began_ns: int = 0
    committed_ns: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    """An event or message that may change something: ``envelope`` None when unreadable,
    ``error`` set when it cannot be applied (unreadable, undecodable or forged), ``forged`` when
    the store contradicts it, ``index`` the message's place in the batch (None for an event read
    from the store to fill a gap)."""

    index: int | None
    body: bytes
    subject: str | None
    headers: dict[str, str] | None
    msg: Msg | None
    envelope: CloudEvent | None
    event: Any
    error: str | None
    forged: bool = False


@dataclass(frozen=True, slots=True)
class _Planned:
    """What becomes of an item: ``apply``; ``dead`` (no aggregate to park: unreadable or
    forged); ``head`` (a dead letter that parks its aggregate); ``park`` (waits behind it)."""

    kind: str
    item: _Item
    error: str | None
    failed_applying: bool = False


class BatchApplier:
    """Applies batches of one projection in single transactions (synchronous: user projection
    code is synchronous and runs in a worker thread, the one sync/async boundary).

    Args:
        projection: the read model to maintain.
        pool: PostgreSQL pool of the read model's database.
        prefix: the stream's subject prefix (dead-letter announcements are skipped).
        cursor: the key of this consumer's stream cursor (default: the projection's name).
        verifier: checks messages against the store (default: ``StoreVerifier("store")``).
        fence: the lease fence every commit passes (default: none, tests and tools only).
        idle_timeout: seconds PostgreSQL lets a batch transaction sit idle before ending it.
        decoder: decodes events read from the store to fill a gap (default: the
            projection's ``event_classes``).
        fill_limit: stored events looked at per log and batch when filling gaps.
        partition: the partition this worker applies (None: the projection is not
            partitioned); only that partition's events are genuine here, and only its gaps
            are filled.
        partitions: how many partitions the stream has.
    """

    def __init__(
        self,
        *,
        projection: Projection,
        pool: ConnectionPool[Any],
        prefix: str,
        cursor: str | None = None,
        verifier: StoreVerifier | None = None,
        fence: Fence | None = None,
        idle_timeout: float = 5.0,
        decoder: EventDecoder | None = None,
        fill_limit: int = 10_000,
        partition: int | None = None,
        partitions: int = 1,
    ) -> None:
        self.projection = projection
        self._decoder = decoder or EventDecoder(projection.event_classes)
        self._fill_limit = fill_limit
        self._pool = pool
        self._prefix = prefix
        self.partition, self.partitions = partition, partitions
        #: Where this worker's positions, cursor and parking lock are kept: the projection's
        #: name, or ``name#k/n`` for partition k of n.
        self.key = partition_label(projection.name, partition, partitions)
        self.cursor = cursor or self.key
        self._verifier = verifier or StoreVerifier()
        self._fence: Fence = fence or NoFence()
        self._idle = sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
            sql.Literal(f"{max(int(idle_timeout * 1000), 1000)}ms")
        )
        self._tracking = PostgresTracking()
        self._cursors = PostgresConsumerCursors()
        self._letters = PostgresDeadLetters()
        self._parking = PostgresParking()
        #: The committed position per log, as this worker last committed or loaded it.
        self.positions: dict[str, TrackedPosition] = {}

    def load(self) -> int:
        """Loads the committed positions; returns the last stream sequence settled.

        Raises:
            StoreUnavailable: PostgreSQL could not be reached.
        """
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                self.positions = self._tracking.all(cur, self.key)
                cursor = self._cursors.get(cur, self.cursor)
        except psycopg.OperationalError as e:
            raise translate(e, f"loading positions of {self.projection.name!r}") from e
        tracked = max((p.stream_sequence for p in self.positions.values()), default=0)
        return max(cursor, tracked)

    def apply(
        self, msgs: Sequence[Msg], intakes: Sequence[Intake], *, isolate: bool, attempt: int
    ) -> tuple[BatchResult, list[Letter]]:
        """Applies one batch in one transaction (see the module).

        Args:
            msgs: the fetched messages, in stream order.
            intakes: what :func:`~eventplatform.consumers.intake.read_message` made of each.
            isolate: isolate transient failures per event too (the last attempt).
            attempt: which attempt this is (recorded on dead letters).

        Returns:
            What the batch did, and the dead letters to announce after the commit.

        Raises:
            FencedOff: the lease or the position moved on; nothing was committed.
            StoreUnavailable: the connection is gone; nothing was committed.
            ProjectionError: the batch failed (transiently, or a defect); nothing was
                committed.
        """
        result = BatchResult(received=len(msgs), began_ns=time.time_ns())
        letters: list[Letter] = []
        name = self.projection.name
        try:
            with self._pool.connection() as conn:
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute(self._idle)
                        positions = self._settle(
                            conn, cur, msgs, intakes, isolate, attempt, result, letters
                        )
                        self._commit(cur, positions, msgs)
                        self._fence.check(cur)
                except psycopg.OperationalError as e:
                    if conn.broken or not isinstance(e, IN_TRANSACTION_ERRORS):
                        raise translate(e, f"applying a batch to {name!r}") from e
                    msg = f"projection {name!r} failed to apply a batch (transient): {e!r}"
                    raise ProjectionError(msg) from e
        except (LeaseLost, ProjectionError, StoreUnavailable):
            raise
        except psycopg.OperationalError as e:  # the pool could not hand out a connection
            raise translate(e, f"applying a batch to {name!r}") from e
        except Exception as e:
            msg = f"projection {name!r} failed to apply a batch: {e!r}"
            raise ProjectionError(msg) from e
        result.committed_ns = time.time_ns()
        self.positions = positions
        result.positions = {log: p.position for log, p in positions.items()}
        return result, letters

    def record_unprocessable(self, msg: Msg, error: str, attempt: int) -> Letter:
        """Dead-letters one message that even a batch of its own could not settle, in a
        transaction of its own: the last resort that keeps a worker from wedging on it.

        The position does not move (whether the message is genuine is unknown); the stream
        cursor moves past it.
        """
        name = self.projection.name
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute(self._idle)
                letter_id = self._letters.record(
                    cur,
                    consumer=name,
                    body=msg.data,
                    error=error,
                    attempts=attempt,
                    subject=msg.subject,
                    headers=msg.headers,
                )
                self._cursors.record(cur, self.cursor, msg.metadata.sequence.stream)
                self._fence.check(cur)
        except psycopg.OperationalError as e:
            raise translate(e, f"dead-lettering for {name!r}") from e
        logger.error("projection %s: dead-lettered an unprocessable message: %s", name, error)
        return (letter_id, name, msg.subject, msg.data, error, attempt)

    # -- inside the transaction -----------------------------------------------------------

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        cur: psycopg.Cursor[Any],
        msgs: Sequence[Msg],
        intakes: Sequence[Intake],
        isolate: bool,
        attempt: int,
        result: BatchResult,
        letters: list[Letter],
    ) -> dict[str, TrackedPosition]:
        items = self._fresh(msgs, intakes, result)
        self._verify(cur, items)
        items = self._fill_gaps(cur, items, result)
        items, positions = self._in_order(items, result, msgs)
        self._parking.lock(cur, self.key)
        parked = self._parking.parked_aggregates(
            cur,
            self.projection.name,
            {i.envelope.subject for i in items if i.envelope and not i.forged},
        )
        failures = self._apply_events(conn, cur, items, set(parked), isolate)
        plan = _plan(items, set(parked), failures)
        for planned in plan:
            if planned.kind == "park":
                self._park(cur, planned.item)
                result.parked += 1
            elif planned.kind == "apply":
                result.applied += 1
                if planned.item.envelope is not None:
                    result.applied_events.append((planned.item.envelope, planned.item.index))
        # Dead letters in the order their messages came (events filled from the store last).
        dead = [p for p in plan if p.kind in ("dead", "head")]
        for planned in sorted(dead, key=_message_order):
            letters.append(self._dead_letter(cur, planned, attempt))
        result.dead_lettered = len(letters)
        return positions

    def _fresh(
        self, msgs: Sequence[Msg], intakes: Sequence[Intake], result: BatchResult
    ) -> list[_Item]:
        """The messages that may change something (everything but announcements); those at
        or below the committed position are dropped after verification, so that a forged one
        still leaves a dead letter."""
        items = []
        for index, (msg, intake) in enumerate(zip(msgs, intakes, strict=True)):
            if is_dead_letter_subject(self._prefix, msg.subject):
                result.skipped += 1
                continue
            envelope = intake.envelope
            items.append(
                _Item(
                    index=index,
                    body=msg.data,
                    subject=msg.subject,
                    headers=msg.headers,
                    msg=msg,
                    envelope=envelope,
                    event=intake.event,
                    error=intake.error,
                )
            )
        return items

    def _verify(self, cur: psycopg.Cursor[Any], items: list[_Item]) -> None:
        readable = [(n, i) for n, i in enumerate(items) if i.envelope is not None]
        verdicts = self._verifier.verify(cur, [i.envelope for _, i in readable if i.envelope])
        for (n, item), verdict in zip(readable, verdicts, strict=True):
            if verdict is None and self.partition is not None and item.envelope is not None:
                # The relay routes each aggregate to one partition: another partition's event
                # here is a stray copy, and applying it would apply it twice.
                actual = partition_of(item.envelope.subject, self.partitions)
                if actual != self.partition:
                    verdict = (
                        f"forged: {item.envelope.source}:{item.envelope.sequence} is in"
                        f" partition {actual}, not {self.partition}"
                    )
            if verdict is not None:
                items[n] = replace(item, event=None, error=verdict, forged=True)

    def _fill_gaps(
        self, cur: psycopg.Cursor[Any], items: list[_Item], result: BatchResult
    ) -> list[_Item]:
        """Genuine events in log order, the stored ones the batch lacks filled in, what lies
        beyond the fill window deferred; unreadable and forged ones first (they take no
        position and park nothing)."""
        rest = [i for i in items if i.envelope is None or i.forged]
        genuine = []
        for item in items:
            if item.envelope is None or item.forged:
                continue
            if item.envelope.sequence <= self.positions.get(item.envelope.source, _ZERO).position:
                result.skipped += 1  # a redelivery or a republish: already applied
                continue
            genuine.append(item)
        by_log: dict[str, list[_Item]] = {}
        for item in genuine:
            assert item.envelope is not None
            by_log.setdefault(item.envelope.source, []).append(item)
        ordered: list[_Item] = []
        for log, carried in by_log.items():
            committed = self.positions.get(log, _ZERO).position
            sequences = {i.envelope.sequence for i in carried if i.envelope}
            bodies, reached = self._verifier.missing(
                cur,
                log,
                after=committed,
                upto=max(sequences),
                carried=sequences,
                limit=self._fill_limit,
                partition=None if self.partition is None else (self.partition, self.partitions),
            )
            for body in bodies:
                intake = read_message(body, self._decoder)
                ordered.append(
                    _Item(None, body, None, None, None, intake.envelope, intake.event, intake.error)
                )
            result.filled += len(bodies)
            for item in carried:
                assert item.envelope is not None
                if item.envelope.sequence > reached:
                    assert item.index is not None
                    result.deferred.append(item.index)
                else:
                    ordered.append(item)
        if result.filled:
            logger.warning(
                "projection %s: %d stored event(s) were not in the batch before a later one;"
                " applied from the store in their place",
                self.projection.name,
                result.filled,
            )
        ordered.sort(
            key=lambda i: (i.envelope.source, i.envelope.sequence) if i.envelope else ("", 0)
        )
        return rest + ordered

    def _in_order(
        self, items: list[_Item], result: BatchResult, msgs: Sequence[Msg]
    ) -> tuple[list[_Item], dict[str, TrackedPosition]]:
        """Drops repeats inside the batch and computes the new positions, from genuine events
        only: a forged message's position is never believed."""
        stream_seq = msgs[-1].metadata.sequence.stream if msgs else 0
        running = {log: p.position for log, p in self.positions.items()}
        kept = []
        for item in items:
            envelope = item.envelope
            if envelope is not None and not item.forged:
                if envelope.sequence <= running.get(envelope.source, 0):
                    result.skipped += 1
                    continue
                running[envelope.source] = envelope.sequence
            if item.forged:
                result.forged += 1
            kept.append(item)
        positions = {
            log: TrackedPosition(
                position, max(self.positions.get(log, _ZERO).stream_sequence, stream_seq)
            )
            for log, position in running.items()
        }
        return kept, positions

    def _apply_events(
        self,
        conn: psycopg.Connection[Any],
        cur: psycopg.Cursor[Any],
        items: list[_Item],
        parked: set[str],
        isolate: bool,
    ) -> dict[int, str]:
        """Applies what the plan applies; returns the items that failed, by index."""
        try:
            # Fast path: every applicable event in one savepoint, pipelined.
            with conn.transaction():
                events = [p.item.event for p in _plan(items, set(parked)) if p.kind == "apply"]
                if events:
                    with conn.pipeline():
                        self.projection.apply_batch(cur, events)
            return {}
        except Exception as e:
            if conn.broken or (is_transient(e) and not isolate):
                raise
            logger.warning("projection %s: batch failed, isolating: %r", self.projection.name, e)
        # Slow path: one savepoint per event, to find and park what fails.
        failures: dict[int, str] = {}
        blocked = set(parked)
        for index, item in enumerate(items):
            envelope = item.envelope
            if envelope is None or item.forged:
                continue
            if item.error is not None:
                blocked.add(envelope.subject)
                continue
            if envelope.subject in blocked:
                continue
            try:
                with conn.transaction():
                    self.projection.apply_batch(cur, [item.event])
            except Exception as e:
                if conn.broken or (is_transient(e) and not isolate):
                    raise
                failures[index] = f"applying failed: {e!r}"
                blocked.add(envelope.subject)
        return failures

    def _commit(
        self,
        cur: psycopg.Cursor[Any],
        positions: dict[str, TrackedPosition],
        msgs: Sequence[Msg],
    ) -> None:
        name = self.key
        for log, new in positions.items():
            old = self.positions.get(log, _ZERO)
            if new.position == old.position:
                continue
            moved = self._tracking.advance(
                cur,
                name,
                log,
                expected=old.position,
                position=new.position,
                stream_sequence=new.stream_sequence,
            )
            if not moved:
                msg = (
                    f"projection {name!r}: the position in {log!r} is no longer {old.position}"
                    " (another worker moved it): batch refused"
                )
                raise FencedOff(msg)
        if msgs:
            self._cursors.record(cur, self.cursor, msgs[-1].metadata.sequence.stream)

    def _dead_letter(self, cur: psycopg.Cursor[Any], planned: _Planned, attempt: int) -> Letter:
        item = planned.item
        error = planned.error or "unknown error"
        logger.error(
            "projection %s: dead-lettering %s%s: %s",
            self.projection.name,
            f"message on {item.subject}" if item.index is not None else "an event of the store",
            " (parking its aggregate)" if planned.kind == "head" else "",
            error,
        )
        attempts = attempt if planned.failed_applying else 1
        letter_id = self._letters.record(
            cur,
            consumer=self.projection.name,
            body=item.body,
            error=error,
            attempts=max(attempts, _delivered(item)),
            subject=item.subject,
            headers=item.headers,
            envelope=item.envelope,
            parked=planned.kind == "head",
        )
        return (letter_id, self.projection.name, item.subject, item.body, error, attempts)

    def _park(self, cur: psycopg.Cursor[Any], item: _Item) -> None:
        envelope = item.envelope
        assert envelope is not None  # only genuine events with an envelope are parked
        self._parking.park(
            cur,
            consumer=self.projection.name,
            aggregate=envelope.subject,
            log=envelope.source,
            sequence=envelope.sequence,
            subject=item.subject,
            body=item.body,
            headers=item.headers,
        )


_ZERO = TrackedPosition(0, 0)


def _delivered(item: _Item) -> int:
    """How often the item's message was delivered (parsed only for dead letters: reading
    a message's metadata parses its reply subject, which costs on the hot path)."""
    return (item.msg.metadata.num_delivered or 1) if item.msg is not None else 1


def _message_order(planned: _Planned) -> tuple[bool, int]:
    index = planned.item.index
    return (index is None, index or 0)


def _log_order(item: _Item) -> tuple[str, int]:
    return (item.envelope.source, item.envelope.sequence) if item.envelope else ("", 0)


def _plan(
    items: list[_Item], parked: set[str], failures: dict[int, str] | None = None
) -> list[_Planned]:
    """Decides each item's fate in order: an aggregate parks from its first failure on.

    Forged and unreadable messages are dead letters that park nothing: what they claim about
    an aggregate is not believed.
    """
    failures = failures or {}
    planned = []
    for index, item in enumerate(items):
        envelope = item.envelope
        if envelope is None or item.forged:
            planned.append(_Planned("dead", item, item.error))
        elif envelope.subject in parked:
            planned.append(_Planned("park", item, None))
        elif item.error is not None:
            parked.add(envelope.subject)
            planned.append(_Planned("head", item, item.error))
        elif index in failures:
            parked.add(envelope.subject)
            planned.append(_Planned("head", item, failures[index], failed_applying=True))
        else:
            planned.append(_Planned("apply", item, None))
    return planned
