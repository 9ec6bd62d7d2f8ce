"""Dead letters: messages a consumer could not process, kept with everything needed to retry.

Where they go, and why:

* **The table** ``eventplatform_dead_letters`` is the record. A dead letter is inserted in the
  same transaction that moves the consumer past the message (tracking position, or the
  handler's ack decision), so a message is never acknowledged without a trace: the original
  bytes, headers, error, attempts, and the envelope's ids when it could be read.
* **The subject** ``<prefix>_dlq.<consumer>`` announces each dead letter to whoever watches
  (alerting, other languages), in its own stream ``<STREAM>_DLQ``. It is kept out of the event
  stream on purpose: a dead letter appended to the event stream would sit between two events
  of the log, trip the relay's expected-last-message fence, and reach every consumer of the
  events. ``<prefix>_dlq.>`` does not overlap ``<prefix>.>`` (the token differs), so JetStream
  accepts both streams. Publishing happens after the commit and is best effort (the table
  already holds the record); its ``Nats-Msg-Id`` is ``dlq:<consumer>:<id>``, so a republish
  is dropped by JetStream.

Statuses: ``open`` (waiting for an operator), ``retried`` (replayed successfully),
``discarded`` (an operator decided it needs nothing).

**Recording cannot fail on content** (DESIGN invariant 8): the original bytes and headers go
into ``bytea`` columns, which take anything; every text column holds :func:`safe_text` of its
value (no NUL, valid UTF-8, bounded); integers come from an envelope already checked to fit.
Should the full insert still be refused, a minimal row (consumer, body, error) is written
instead, in a savepoint, so a message is never acknowledged without a trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import nats.errors
import orjson
import psycopg
from psycopg import sql

from eventplatform.errors import EventPlatformError
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import StreamSpec
from eventplatform.redaction import redact
from eventplatform.store.schema import DEAD_LETTERS

logger = logging.getLogger(__name__)

Status = Literal["open", "retried", "discarded"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

#: Headers a published dead letter carries besides the original ones.
ERROR_HEADER = "Eventplatform-Error"
ATTEMPTS_HEADER = "Eventplatform-Attempts"
CONSUMER_HEADER = "Eventplatform-Consumer"
SUBJECT_HEADER = "Eventplatform-Original-Subject"
ID_HEADER = "Eventplatform-Dead-Letter-Id"


def dead_letter_subject(prefix: str, consumer: str) -> str:
    """``<prefix>_dlq.<consumer>`` (the consumer name made a valid subject token)."""
    return f"{prefix}_dlq.{_UNSAFE.sub('_', consumer)}"


def is_dead_letter_subject(prefix: str, subject: str) -> bool:
    """Whether ``subject`` is a dead-letter announcement (consumers ack and ignore these)."""
    return subject.startswith(f"{prefix}_dlq.")


def dead_letter_stream(
    stream: str,
    prefix: str,
    *,
    replicas: int = 1,
    max_age: float = 0.0,
    max_bytes: int = -1,
) -> StreamSpec:
    """The stream that keeps dead-letter announcements: ``<STREAM>_DLQ`` on ``<prefix>_dlq.>``.

    Args:
        stream: the event stream's name.
        prefix: the event stream's subject prefix.
        replicas: as the event stream's.
        max_age: seconds an announcement is kept (0: for ever; the table keeps the record).
        max_bytes: bytes the stream keeps (-1: no limit).
    """
    return StreamSpec(
        name=f"{stream}_DLQ",
        subjects=(f"{prefix}_dlq.>",),
        duplicate_window=120.0,
        replicas=replicas,
        max_age=max_age,
        max_bytes=max_bytes,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A recorded dead letter.

    Attributes:
        id: its number (what ``eventplatform dlq show ID`` takes).
        consumer: the projection or handler that gave up on it.
        subject: the subject it arrived on.
        message_id: its ``Nats-Msg-Id``.
        event_id: the CloudEvents ``id`` (None when the message could not be read).
        log: the CloudEvents ``source`` (None when unreadable).
        aggregate: the CloudEvents ``subject``, the aggregate id (None when unreadable).
        sequence: the notification id (None when unreadable).
        error: why it failed, the last error's words.
        attempts: how often it was tried.
        body: the original message bytes.
        headers: the original headers.
        parked: true for a projection event whose aggregate's later events wait behind it.
        status: ``open``, ``retried`` or ``discarded``.
        created_at: when it was recorded.
        resolved_at: when it was retried or discarded.
    """

    id: int
    consumer: str
    subject: str | None
    message_id: str | None
    event_id: str | None
    log: str | None
    aggregate: str | None
    sequence: int | None
    error: str
    attempts: int
    body: bytes
    headers: dict[str, str] | None
    parked: bool
    status: str
    created_at: datetime
    resolved_at: datetime | None


_COLUMNS = sql.SQL(
    "id, consumer, subject, message_id, event_id, log, aggregate, sequence, error, attempts,"
    " body, headers, parked, status, created_at, resolved_at"
)


class PostgresDeadLetters:
    """Reads and writes dead letters with the caller's cursor (so they share its transaction)."""

    _insert = sql.SQL(
        "INSERT INTO {} (consumer, subject, message_id, event_id, log, aggregate, sequence,"
        " error, attempts, body, headers, parked)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
    ).format(sql.Identifier(DEAD_LETTERS))
    _insert_minimal = sql.SQL(
        "INSERT INTO {} (consumer, error, attempts, body) VALUES (%s, %s, %s, %s) RETURNING id"
    ).format(sql.Identifier(DEAD_LETTERS))

    def record(
        self,
        cur: psycopg.Cursor[Any],
        *,
        consumer: str,
        body: bytes,
        error: str,
        attempts: int = 1,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        envelope: CloudEvent | None = None,
        parked: bool = False,
    ) -> int:
        """Records a dead letter and returns its id.

        Args:
            cur: cursor of the transaction that also moves the consumer past the message.
            consumer: the projection or handler name.
            body: the original message bytes.
            error: what went wrong.
            attempts: how often it was tried.
            subject: the subject it arrived on.
            headers: its headers.
            envelope: the decoded CloudEvent, when decoding got that far.
            parked: the aggregate's later events are parked behind this one.
        """
        headers = dict(headers or {})
        params = (
            safe_text(consumer),
            safe_text(subject),
            safe_text(headers.get("Nats-Msg-Id")),
            envelope.id if envelope else None,
            envelope.source if envelope else None,
            envelope.subject if envelope else None,
            envelope.sequence if envelope else None,
            safe_text(redact(error), MAX_ERROR_LENGTH),
            min(max(attempts, 0), 2**31 - 1),
            bytes(body),
            encode_headers(headers),
            parked,
        )
        try:
            with cur.connection.transaction():
                cur.execute(self._insert, params)
        except psycopg.DataError as e:
            # Should be impossible (every value above is made safe); never lose the message
            # over it: keep what cannot be refused, and say why the rest is missing.
            logger.error("dead letter of %s recorded without its details: %r", consumer, e)
            minimal = f"{safe_text(redact(error), MAX_ERROR_LENGTH)} (details refused: {e!r})"
            cur.execute(
                self._insert_minimal,
                (safe_text(consumer), safe_text(minimal, MAX_ERROR_LENGTH), 1, bytes(body)),
            )
        row = cur.fetchone()
        assert row is not None  # RETURNING always yields the row
        return int(row[0])

    def get(self, cur: psycopg.Cursor[Any], dead_letter_id: int) -> DeadLetter | None:
        """Returns one dead letter, or None when there is no such id."""
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                _COLUMNS, sql.Identifier(DEAD_LETTERS)
            ),
            (dead_letter_id,),
        )
        rows = self._rows(cur)
        return rows[0] if rows else None

    def find(
        self,
        cur: psycopg.Cursor[Any],
        *,
        consumer: str | None = None,
        statuses: Sequence[str] = ("open",),
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Returns dead letters, oldest first.

        Args:
            cur: a cursor.
            consumer: only this consumer's (default: all).
            statuses: only these statuses (default: open ones).
            limit: at most this many.
        """
        cur.execute(
            sql.SQL(
                "SELECT {} FROM {} WHERE (%s::text IS NULL OR consumer = %s)"
                " AND status = ANY(%s) ORDER BY id LIMIT %s"
            ).format(_COLUMNS, sql.Identifier(DEAD_LETTERS)),
            (consumer, consumer, list(statuses), limit),
        )
        return self._rows(cur)

    def resolve(self, cur: psycopg.Cursor[Any], dead_letter_id: int, status: Status) -> bool:
        """Marks an open dead letter retried or discarded; false when it was not open."""
        cur.execute(
            sql.SQL(
                "UPDATE {} SET status = %s, resolved_at = now() WHERE id = %s AND status = 'open'"
            ).format(sql.Identifier(DEAD_LETTERS)),
            (status, dead_letter_id),
        )
        return cur.rowcount == 1

    def note_failure(self, cur: psycopg.Cursor[Any], dead_letter_id: int, error: str) -> None:
        """Records that a retry failed again: the new error, one more attempt."""
        cur.execute(
            sql.SQL("UPDATE {} SET error = %s, attempts = attempts + 1 WHERE id = %s").format(
                sql.Identifier(DEAD_LETTERS)
            ),
            (safe_text(redact(error), MAX_ERROR_LENGTH), dead_letter_id),
        )

    def lock(self, cur: psycopg.Cursor[Any], dead_letter_id: int) -> DeadLetter | None:
        """Returns the dead letter locked ``FOR UPDATE`` (so two retries run one after another)."""
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s FOR UPDATE").format(
                _COLUMNS, sql.Identifier(DEAD_LETTERS)
            ),
            (dead_letter_id,),
        )
        rows = self._rows(cur)
        return rows[0] if rows else None

    def lock_owned(
        self, cur: psycopg.Cursor[Any], dead_letter_id: int, consumer: str
    ) -> DeadLetter:
        """Locks the dead letter and checks it belongs to ``consumer``.

        Raises:
            EventPlatformError: no such dead letter, or it belongs to another consumer.
        """
        letter = self.lock(cur, dead_letter_id)
        if letter is None:
            msg = f"no dead letter with id {dead_letter_id}"
            raise EventPlatformError(msg)
        if letter.consumer != consumer:
            msg = f"dead letter {dead_letter_id} belongs to {letter.consumer!r}, not {consumer!r}"
            raise EventPlatformError(msg)
        return letter

    @staticmethod
    def _rows(cur: psycopg.Cursor[Any]) -> list[DeadLetter]:
        names = [d.name for d in cur.description or ()]
        out = []
        for row in cur.fetchall():
            values = dict(zip(names, row, strict=True))
            values["body"] = bytes(values["body"])
            values["headers"] = decode_headers(values["headers"])
            out.append(DeadLetter(**values))
        return out


async def publish_dead_letters(
    js: Any, prefix: str, letters: Sequence[tuple[int, str, str | None, bytes, str, int]]
) -> None:
    """Announces recorded dead letters on ``<prefix>_dlq.<consumer>`` (best effort).

    Args:
        js: a JetStream context.
        prefix: the subject prefix of the stream.
        letters: ``(id, consumer, original subject, body, error, attempts)`` per dead letter,
            already committed to the table.
    """
    for dead_letter_id, consumer, subject, body, error, attempts in letters:
        headers = {
            "Nats-Msg-Id": f"dlq:{consumer}:{dead_letter_id}",
            ID_HEADER: str(dead_letter_id),
            CONSUMER_HEADER: consumer,
            ERROR_HEADER: _header_value(error),
            ATTEMPTS_HEADER: str(attempts),
        }
        if subject:
            headers[SUBJECT_HEADER] = _header_value(subject)
        try:
            await js.publish(dead_letter_subject(prefix, consumer), body, headers=headers)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            logger.warning(
                "dead letter %d of %s recorded but not announced on NATS: %r",
                dead_letter_id,
                consumer,
                e,
            )


#: Longest text kept of any one value a message brings (subject, msg id); errors get more.
MAX_TEXT_LENGTH = 1024
MAX_ERROR_LENGTH = 8000


def safe_text(value: str | None, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """``value`` as PostgreSQL text takes it: NUL replaced, valid UTF-8, at most ``limit``.

    Values here come from messages anyone may have written; the original stays in the
    ``bytea`` columns, this is only what a person reads.
    """
    if value is None:
        return None
    text = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_headers(headers: Mapping[str, str] | None) -> bytes | None:
    """Headers as JSON bytes for a ``bytea`` column (never refused: NUL is escaped)."""
    if not headers:
        return None
    try:
        return orjson.dumps(dict(headers))
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates and other oddities
        return repr(dict(headers)).encode("utf-8", "backslashreplace")


def decode_headers(raw: bytes | memoryview | None) -> dict[str, str] | None:
    """Headers written by :func:`encode_headers` (None when unreadable or absent)."""
    if raw is None:
        return None
    try:
        value = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _header_value(text: str, limit: int = 1024) -> str:
    # Header values are one line (no CR/LF: no header injection), without NUL, and short
    # (the table has the full error).
    flat = " ".join((safe_text(text, limit * 2) or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


__all__ = [
    "DeadLetter",
    "PostgresDeadLetters",
    "dead_letter_stream",
    "dead_letter_subject",
    "decode_headers",
    "encode_headers",
    "is_dead_letter_subject",
    "publish_dead_letters",
    "safe_text",
]
