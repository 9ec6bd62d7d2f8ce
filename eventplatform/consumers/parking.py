"""Order-preserving parking for projections, and releasing what was parked.

When a projection cannot apply an event of aggregate A (a bug, data it does not expect, a
message it cannot decode), applying A's *later* events would build a wrong row. So the failing
event becomes a dead letter marked ``parked``, and every later event of A that arrives while
that dead letter is open goes to ``eventplatform_parked_events`` instead of the read model.
Other aggregates flow on, and the projection's position still advances: parked events are
recorded, not lost.

Releasing (``eventplatform dlq retry ID``) applies the dead letter's event and then A's parked
events, in notification order, through the same projection code, in one transaction that
also deletes the parked rows and resolves the dead letter. Releasing twice is harmless: the
second finds the dead letter resolved and the parked rows gone. Live batches and releases of
one projection take the same transaction-level advisory lock, so a live event of A cannot
slip past its parked predecessors while they are being released.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventplatform.consumers.dead_letters import PostgresDeadLetters, encode_headers
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.verification import StoreVerifier
from eventplatform.consumers.versions import PostgresProjectionVersions
from eventplatform.errors import DecodeError, EventPlatformError, ProjectionError
from eventplatform.messagebus import cloudevents
from eventplatform.partitions import partition_label, partition_of
from eventplatform.store.postgres import translate
from eventplatform.store.schema import DEAD_LETTERS, PARKED_EVENTS


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """What a release did.

    Attributes:
        status: ``"applied"``, or ``"not open"`` when the dead letter was already retried or
            discarded (nothing happened).
        applied: events applied (the dead letter's own and the parked ones behind it).
    """

    status: str
    applied: int


class PostgresParking:
    """Parks and lists events with the caller's cursor."""

    def lock(self, cur: psycopg.Cursor[Any], consumer: str) -> None:
        """Takes the projection's parking lock until the transaction ends."""
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"eventplatform.parking:{consumer}",),
        )

    def lock_for(self, cur: psycopg.Cursor[Any], consumer: str, aggregate: str | None) -> None:
        """Takes the lock the live worker of ``aggregate``'s partition takes for its batches
        (the projection's own lock when it is not partitioned)."""
        n = PostgresProjectionVersions().partitions(cur, consumer)
        if n > 1 and aggregate is not None:
            consumer = partition_label(consumer, partition_of(aggregate, n), n)
        self.lock(cur, consumer)

    def parked_aggregates(
        self, cur: psycopg.Cursor[Any], consumer: str, aggregates: Collection[str]
    ) -> set[str]:
        """Which of ``aggregates`` have an open parked dead letter (their events must wait)."""
        if not aggregates:
            return set()
        cur.execute(
            sql.SQL(
                "SELECT DISTINCT aggregate FROM {} WHERE consumer = %s AND parked"
                " AND status = 'open' AND aggregate = ANY(%s)"
            ).format(sql.Identifier(DEAD_LETTERS)),
            (consumer, list(aggregates)),
        )
        return {row[0] for row in cur.fetchall()}

    def park(
        self,
        cur: psycopg.Cursor[Any],
        *,
        consumer: str,
        aggregate: str,
        log: str,
        sequence: int,
        subject: str | None,
        body: bytes,
        headers: Mapping[str, str] | None,
    ) -> None:
        """Parks one event behind its aggregate's open dead letter."""
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (consumer, aggregate, log, sequence, subject, body, headers)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(PARKED_EVENTS)),
            (
                consumer,
                aggregate,
                log,
                sequence,
                subject,
                body,
                encode_headers(headers),
            ),
        )

    def parked(
        self, cur: psycopg.Cursor[Any], consumer: str, aggregate: str
    ) -> list[tuple[int, bytes]]:
        """``(row id, body)`` of an aggregate's parked events, in log order, locked."""
        cur.execute(
            sql.SQL(
                "SELECT id, body FROM {} WHERE consumer = %s AND aggregate = %s"
                " ORDER BY log, sequence, id FOR UPDATE"
            ).format(sql.Identifier(PARKED_EVENTS)),
            (consumer, aggregate),
        )
        return [(int(row[0]), bytes(row[1])) for row in cur.fetchall()]

    def count(self, cur: psycopg.Cursor[Any], consumer: str) -> dict[str, int]:
        """Parked events per aggregate of a projection."""
        cur.execute(
            sql.SQL(
                "SELECT aggregate, count(*) FROM {} WHERE consumer = %s GROUP BY aggregate"
            ).format(sql.Identifier(PARKED_EVENTS)),
            (consumer,),
        )
        return {row[0]: int(row[1]) for row in cur.fetchall()}

    def delete(self, cur: psycopg.Cursor[Any], ids: list[int]) -> None:
        """Deletes released rows."""
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(PARKED_EVENTS)),
            (ids,),
        )


def release(
    conn: psycopg.Connection[Any],
    projection: Projection,
    dead_letter_id: int,
    *,
    decoder: EventDecoder | None = None,
    verifier: StoreVerifier | None = None,
) -> ReleaseResult:
    """Applies a projection's dead letter and the events parked behind it, in order.

    Args:
        conn: a connection (not in a transaction); the release is one transaction.
        projection: the projection that dead-lettered it (after the fix).
        dead_letter_id: the dead letter's id.
        decoder: the projection's decoder (default: from its ``event_classes``).
        verifier: checks the events against the store first, as live traffic is (default:
            the store); a forged dead letter is never applied.

    Returns:
        What was applied; ``status == "not open"`` when it had been released already.

    Raises:
        EventPlatformError: no such dead letter, or it belongs to another consumer.
        DecodeError, ProjectionError: it still fails; the error is recorded on the dead
            letter and nothing is applied.
    """
    decoder = decoder or EventDecoder(projection.event_classes)
    letters = PostgresDeadLetters()
    parking = PostgresParking()
    failure: Exception | None = None
    try:
        with conn.transaction(), conn.cursor() as cur:
            found = letters.get(cur, dead_letter_id)
            parking.lock_for(cur, projection.name, found.aggregate if found else None)
            letter = letters.lock_owned(cur, dead_letter_id, projection.name)
            if letter.status != "open":
                return ReleaseResult("not open", 0)
            behind = (
                parking.parked(cur, projection.name, letter.aggregate)
                if letter.parked and letter.aggregate
                else []
            )
            try:
                with conn.transaction():
                    envelopes = [
                        cloudevents.decode(body) for body in [letter.body, *(b for _, b in behind)]
                    ]
                    forged = [v for v in (verifier or StoreVerifier()).verify(cur, envelopes) if v]
                    if forged:
                        raise DecodeError(forged[0])
                    events = [decoder.decode(envelope) for envelope in envelopes]
                    projection.apply_batch(cur, events)
            except Exception as e:
                if conn.broken:
                    raise
                letters.note_failure(cur, letter.id, f"release failed: {e!r}")
                failure = e
            else:
                parking.delete(cur, [row_id for row_id, _ in behind])
                letters.resolve(cur, letter.id, "retried")
                return ReleaseResult("applied", len(events))
    except psycopg.OperationalError as e:
        raise translate(e, f"releasing dead letter {dead_letter_id}") from e
    if isinstance(failure, DecodeError):
        raise failure
    msg = f"dead letter {dead_letter_id} still fails in {projection.name!r}: {failure!r}"
    raise ProjectionError(msg) from failure


@dataclass(frozen=True, slots=True)
class DiscardResult:
    """What a discard did.

    Attributes:
        status: ``"discarded"``, ``"not open"`` (nothing done) or ``"refused"`` (parked
            events wait behind it and ``force`` was not given).
        parked: parked events behind it (dropped when ``status == "discarded"``).
    """

    status: str
    parked: int


def discard(conn: psycopg.Connection[Any], dead_letter_id: int, *, force: bool) -> DiscardResult:
    """Marks a dead letter discarded: an operator decided it needs no processing.

    A parked dead letter holds its aggregate's later events; discarding it alone would let
    new events of that aggregate apply while the older ones stay parked, so it is refused
    unless ``force``, which drops the parked events too (they stay visible in the log and
    can be replayed by rebuilding the projection).

    Raises:
        EventPlatformError: no such dead letter.
    """
    letters = PostgresDeadLetters()
    parking = PostgresParking()
    try:
        with conn.transaction(), conn.cursor() as cur:
            letter = letters.get(cur, dead_letter_id)
            if letter is None:
                msg = f"no dead letter with id {dead_letter_id}"
                raise EventPlatformError(msg)
            parking.lock_for(cur, letter.consumer, letter.aggregate)
            letter = letters.lock_owned(cur, dead_letter_id, letter.consumer)
            if letter.status != "open":
                return DiscardResult("not open", 0)
            behind = (
                parking.parked(cur, letter.consumer, letter.aggregate)
                if letter.parked and letter.aggregate
                else []
            )
            if behind and not force:
                return DiscardResult("refused", len(behind))
            parking.delete(cur, [row_id for row_id, _ in behind])
            letters.resolve(cur, letter.id, "discarded")
            return DiscardResult("discarded", len(behind))
    except psycopg.OperationalError as e:
        raise translate(e, f"discarding dead letter {dead_letter_id}") from e
