"""Idempotent event handlers: side effects exactly once, retried with back-off, dead-lettered.

A handler is a synchronous callable ``func(cur, event)`` that writes with the cursor it is
given. :class:`IdempotentEventHandler` runs it in one PostgreSQL transaction together with a
marker row ``(handler, event id)`` in ``eventplatform_processed_events``: the marker's primary
key makes a redelivered, republished or replayed event a no-op, whatever order events arrive
in (the dedup key is the CloudEvents ``id``, not a position). A side effect outside the
database (an e-mail, an HTTP call) must itself be idempotent or keyed by the event id; the
marker only guarantees the handler is not *completed* twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventplatform.consumers.dead_letters import (
    PostgresDeadLetters,
)
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.faults import is_outage
from eventplatform.consumers.retry import RetryPolicy, Sleep
from eventplatform.consumers.verification import StoreVerifier
from eventplatform.errors import (
    ConfigurationError,
    DecodeError,
    EventPlatformError,
    StoreUnavailable,
)
from eventplatform.leases.fence import Fence
from eventplatform.leases.leadership import LeaseLost
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.store.postgres import translate
from eventplatform.store.schema import PROCESSED_EVENTS

logger = logging.getLogger(__name__)


#: What a handler is: a synchronous function that writes with the given cursor only.
HandlerFunc = Callable[[psycopg.Cursor[Any], Any], None]


class HandlerFailed(EventPlatformError):
    """A handler still failed after its attempts (or failed permanently).

    Attributes:
        attempts: how often it was tried.
    """

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class IdempotentEventHandler:
    """Wraps a handler with idempotency (event-id marker), a transaction and retries.

    Args:
        name: the handler's stable name: marker key, durable consumer and dead-letter owner.
        func: ``func(cur, event)``; writes with ``cur`` only, never commits.
        event_classes: the domain events it decodes (others arrive as :class:`CloudEvent`).
        strict: dead-letter event types not in ``event_classes`` instead of passing them on.
        policy: attempts and back-off (default :class:`RetryPolicy`).
        decoder: overrides the decoder built from ``event_classes``.
    """

    _mark = sql.SQL(
        "INSERT INTO {} (handler, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(PROCESSED_EVENTS))

    def __init__(
        self,
        name: str,
        func: HandlerFunc,
        *,
        event_classes: Iterable[type[Any]] = (),
        strict: bool = False,
        policy: RetryPolicy | None = None,
        decoder: EventDecoder | None = None,
    ) -> None:
        if not name or not name.strip():
            msg = "an idempotent handler needs a non-empty name (it keys its markers)"
            raise ConfigurationError(msg)
        self.name = name
        self.func = func
        self.policy = policy or RetryPolicy()
        self.decoder = decoder or EventDecoder(event_classes, strict=strict)

    def decode(self, body: bytes) -> tuple[CloudEvent, Any]:
        """Decodes a message body into its envelope and event.

        Raises:
            DecodeError: the body is not a CloudEvent this handler can read.
        """
        envelope = cloudevents.decode(body)
        return envelope, self.decoder.decode(envelope)

    def process(
        self,
        conn: psycopg.Connection[Any],
        envelope: CloudEvent,
        event: Any,
        *,
        fence: Fence | None = None,
    ) -> bool:
        """One attempt, in one transaction: marker first, then the handler's writes, then the
        fence (when the handler runs partitioned, its partition's lease token).

        Returns:
            True when the handler ran, False when the event id was already processed.

        Raises:
            FencedOff: the partition's lease moved on; nothing was committed.
        """
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(self._mark, (self.name, envelope.id))
            if cur.rowcount == 0:
                return False
            self.func(cur, event)
            if fence is not None:
                fence.check(cur)
        return True

    async def handle(
        self,
        pool: ConnectionPool[Any],
        envelope: CloudEvent,
        event: Any,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        fence: Fence | None = None,
    ) -> bool:
        """Processes an event, retrying per the policy; never blocks the event loop.

        Args:
            pool: where the handler's transaction runs.
            envelope: the event's envelope (its ``id`` is the dedup key).
            event: the decoded event passed to the handler.
            sleep: waits between attempts (inject a recorder in tests).
            rng: randomness for the jitter (inject a seeded one in tests).
            fence: checked in the handler's transaction (partitioned handlers).

        Returns:
            True when the handler ran, False for a duplicate.

        Raises:
            HandlerFailed: it failed permanently or on every attempt.
            StoreUnavailable: PostgreSQL could not be reached on the last attempt (the event
                is not at fault: leave it unacknowledged).
            LeaseLost: the partition's lease moved on (leave it unacknowledged, stand by).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await asyncio.to_thread(self._process_pooled, pool, envelope, event, fence)
            except LeaseLost:
                raise
            except Exception as e:
                if self.policy.should_retry(e, attempt):
                    delay = self.policy.delay(attempt, rng)
                    logger.warning(
                        "handler %s: event %s failed (attempt %d/%d), retrying in %.3fs: %r",
                        self.name,
                        envelope.id,
                        attempt,
                        self.policy.attempts,
                        delay,
                        e,
                    )
                    await sleep(delay)
                    continue
                if is_outage(e):
                    # The database is away, the event is fine: never dead-letter it for that.
                    msg = f"handler {self.name!r} cannot reach PostgreSQL: {e!r}"
                    raise StoreUnavailable(msg) from e
                msg = (
                    f"handler {self.name!r} failed on event {envelope.id} ({envelope.type}): {e!r}"
                )
                raise HandlerFailed(msg, attempt) from e

    def _process_pooled(
        self, pool: ConnectionPool[Any], envelope: CloudEvent, event: Any, fence: Fence | None
    ) -> bool:
        with pool.connection() as conn:
            return self.process(conn, envelope, event, fence=fence)


def idempotent(name: str, **options: Any) -> Callable[[HandlerFunc], IdempotentEventHandler]:
    """Decorator form: ``@idempotent("send-welcome", event_classes=[User.Registered])``."""

    def wrap(func: HandlerFunc) -> IdempotentEventHandler:
        return IdempotentEventHandler(name, func, **options)

    return wrap


def retry_dead_letter(
    conn: psycopg.Connection[Any],
    handler: IdempotentEventHandler,
    dead_letter_id: int,
    *,
    verifier: StoreVerifier | None = None,
) -> str:
    """Replays one dead letter through the handler, in one transaction with its resolution.

    The event is checked against the store first (``verifier``, default: the store), as live
    traffic is: a forged dead letter stays a dead letter.

    Returns:
        ``"applied"``, ``"duplicate"`` (the marker says it ran already) or ``"not open"``
        (already retried or discarded: nothing happens, so retrying twice is harmless).

    Raises:
        DecodeError: the message still cannot be decoded (recorded on the dead letter).
        HandlerFailed: the handler failed again (recorded on the dead letter).
        EventPlatformError: no such dead letter, or it belongs to another consumer.
    """
    letters = PostgresDeadLetters()
    try:
        with conn.transaction(), conn.cursor() as cur:
            letter = letters.lock_owned(cur, dead_letter_id, handler.name)
            if letter.status != "open":
                return "not open"
            try:
                with conn.transaction():
                    envelope, event = handler.decode(letter.body)
                    (forged,) = (verifier or StoreVerifier()).verify(cur, [envelope])
                    if forged is not None:
                        raise DecodeError(forged)
                    ran = handler.process(conn, envelope, event)
            except Exception as e:
                letters.note_failure(cur, letter.id, f"retry failed: {e!r}")
                failure: Exception = e
            else:
                letters.resolve(cur, letter.id, "retried")
                return "applied" if ran else "duplicate"
    except psycopg.OperationalError as e:
        raise translate(e, f"retrying dead letter {dead_letter_id}") from e
    if isinstance(failure, DecodeError):
        raise failure
    msg = f"dead letter {dead_letter_id} failed again in {handler.name!r}: {failure!r}"
    raise HandlerFailed(msg, letter.attempts + 1) from failure


__all__: Sequence[str] = [
    "HandlerFailed",
    "IdempotentEventHandler",
    "idempotent",
    "retry_dead_letter",
]
