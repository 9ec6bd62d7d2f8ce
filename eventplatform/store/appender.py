"""Appending the events of a group of commands to a log's table, in one transaction.

One round trip per group in the common case: a single simple-protocol message carries
``BEGIN; SET LOCAL lock_timeout; LOCK TABLE … IN EXCLUSIVE MODE; NOTIFY; INSERT … RETURNING;
COMMIT``. The lock is eventsourcing's own (DESIGN invariant 1: ids are handed out and committed
by one transaction at a time, so a reader that follows ids never passes one that commits later);
the NOTIFY is the one the relay LISTENs for. Parameters are bound client-side (psycopg's
``ClientCursor`` quoting) because the extended protocol takes one statement per message: the
same statements pipelined cost about twice the CPU and several socket waits per command.

Each command gets its own outcome, whatever happens to the group:

* **conflict** (another writer stored one of the command's versions first): the transaction
  fails on the primary key and writes nothing; the commands whose versions are taken are told
  so (:class:`ConcurrencyConflict`), the others are written again without them. Two commands
  of one group on the same aggregate version never share a transaction: the later waits for the
  next (so it conflicts exactly as if it had come after).
* **data error** (not a conflict, not an outage): the commands are written again one by one,
  so only the command whose events PostgreSQL refuses fails.
* **refused by a live server** (the table lock not granted within ``lock_timeout``, a
  cancelled statement): the transaction was rolled back, the group fails at once with
  :class:`StoreUnavailable`, nothing stored.
* **connection lost** (a server restart, a killed backend, a stale pooled connection — there is
  no pre-ping): if it broke before anything was sent, the group is simply sent again on a new
  connection. If it broke after the message was sent, the commit may or may not have happened.
  The outcome is then read back on a new connection, after taking the table in SHARE mode (which
  waits for any transaction still holding the EXCLUSIVE lock, i.e. a commit of ours still in
  flight): if every event of the group is stored with our exact topic and state, the group
  committed and each command gets its ids; if not, nothing of it is stored (a transaction is
  atomic) and it is sent again. Only when the server stays out of reach for ``retry_for``
  seconds does a command fail: with :class:`StoreUnavailable` when nothing can have been
  written, with :class:`CommitOutcomeUnknown` when it may have been.

Never a silent loss, never a double write: a command's events are stored at most once (the
primary key), and a caller hears "stored" only after reading so from PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import ClientCursor, sql
from psycopg.pq import TransactionStatus

from eventplatform.backoff import backoff
from eventplatform.errors import (
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    EventPlatformError,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from eventplatform.store.trace_context import has_trace_column

logger = logging.getLogger(__name__)


class StoredEvent(Protocol):
    """What the appender needs of an event (eventsourcing's ``StoredEvent`` has it)."""

    @property
    def originator_id(self) -> Any:
        """The aggregate's id."""
        ...

    @property
    def originator_version(self) -> int:
        """The event's position in its aggregate's sequence."""
        ...

    @property
    def topic(self) -> str:
        """The event's topic."""
        ...

    @property
    def state(self) -> bytes:
        """The event's encoded state."""
        ...


Command = Sequence[StoredEvent]
"""The events one command saves, stored together or not at all."""

Outcome = list[int] | EventPlatformError
"""A command's notification ids (one per event, in order), or the error it alone failed with."""

_Key = tuple[Any, int]

#: Groups of up to this many events reuse their composed statement (one string per size).
_CACHED_SIZES = 64


class _SentAndLost(Exception):
    """The connection broke after the group was sent: its commit may have happened."""


class _Refused(Exception):
    """The server answered the group with an error and rolled it back: nothing is stored."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


class PostgresEventAppender:
    """Writes groups of commands into ``<log>_events`` (the :class:`GroupWriter` of the store).

    Not thread-safe: one thread writes at a time (the group committer's leader).

    Args:
        connect: opens a new autocommit connection; called lazily, and again after a
            connection broke.
        table: the events table, possibly schema-qualified (``("public", "products_events")``).
        channel: the NOTIFY channel the relay listens on (eventsourcing: the table name).
        lock_timeout: seconds to wait for the table lock before failing the group.
        retry_for: seconds to keep trying while the server is out of reach.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        table: Sequence[str],
        channel: str,
        lock_timeout: float = 5.0,
        retry_for: float = 10.0,
    ) -> None:
        self._connect = connect
        self._retry_for = retry_for
        self._conn: psycopg.Connection[Any] | None = None
        self._table = ".".join(table)
        ident = sql.Identifier(*table)
        timeout = sql.Literal(f"{max(int(lock_timeout * 1000), 1)}ms")
        head = sql.SQL(
            "BEGIN; SET LOCAL lock_timeout = {timeout}; LOCK TABLE {t} IN EXCLUSIVE MODE;"
            " NOTIFY {channel}; INSERT INTO {t} ({columns}) VALUES "
        )
        self._heads = {
            traced: head.format(
                timeout=timeout,
                t=ident,
                channel=sql.Identifier(channel),
                columns=sql.SQL(
                    "originator_id, originator_version, topic, state"
                    + (", traceparent" if traced else "")
                ),
            )
            for traced in (False, True)
        }
        #: Whether the table has the traceparent column (store/trace_context.py); asked once.
        self._traced: bool | None = None
        self._table_parts = tuple(table)
        self._tail = sql.SQL(
            " RETURNING originator_id, originator_version, notification_id; COMMIT"
        )
        self._queries: dict[int, str] = {}
        self._share_lock = sql.SQL(
            "SET LOCAL lock_timeout = {timeout}; LOCK TABLE {t} IN SHARE MODE"
        ).format(timeout=timeout, t=ident)
        self._stored = sql.SQL(
            "SELECT originator_id, originator_version, notification_id, topic, state FROM {t}"
            " WHERE (originator_id, originator_version) IN"
            " (SELECT * FROM unnest(%s, %s))"
        ).format(t=ident)

    def close(self) -> None:
        """Closes the connection (a later write opens a new one)."""
        self._discard()

    def write(self, commands: Sequence[Command]) -> list[Outcome]:
        """Stores each command's events, all commands in one transaction when possible.

        Returns:
            One outcome per command, in order: its notification ids, or its own error
            (:class:`ConcurrencyConflict`, :class:`StoreUnavailable`,
            :class:`CommitOutcomeUnknown`, :class:`StoreError`, :class:`SchemaError`).
        """
        outcomes: list[Outcome | None] = [None] * len(commands)
        waiting = [i for i, command in enumerate(commands) if command]
        for i, command in enumerate(commands):
            if not command:
                outcomes[i] = []
        while waiting:
            batch, waiting = _first_claims(commands, waiting)
            self._write_batch(commands, batch, outcomes)
        return [o if o is not None else [] for o in outcomes]

    # -- one batch: keys unique within it --------------------------------------------------

    def _write_batch(
        self, commands: Sequence[Command], batch: list[int], outcomes: list[Outcome | None]
    ) -> None:
        deadline = time.monotonic() + self._retry_for
        failures = 0
        in_doubt = False  # a transaction of this batch was sent and its answer lost
        check_conflicts = False  # the last transaction hit a stored version
        while batch:
            events = [e for i in batch for e in commands[i]]
            try:
                if in_doubt:
                    ids = self._committed_ids(events)
                    in_doubt = False
                    if ids is None:
                        continue  # nothing of it is stored: send it again
                elif check_conflicts:
                    taken = self._taken_keys(events)
                    check_conflicts = False
                    conflicted = [i for i in batch if any(_key(e) in taken for e in commands[i])]
                    for i in conflicted:
                        outcomes[i] = _conflict(commands[i], self._table)
                    if not conflicted:  # a unique violation on something else: not retryable
                        for i in batch:
                            outcomes[i] = StoreError(
                                f"unexpected unique violation in {self._table!r}"
                            )
                        return
                    batch = [i for i in batch if i not in conflicted]
                    continue
                else:
                    ids = self._insert(events)
            except _Refused as refused:
                e = refused.cause
                if isinstance(e, psycopg.errors.UniqueViolation):
                    check_conflicts = True
                    continue
                if isinstance(e, psycopg.OperationalError):
                    # The server answered with an error (e.g. the lock timed out): the
                    # transaction was rolled back, nothing is stored, retrying now is futile.
                    for i in batch:
                        outcomes[i] = _unavailable(e, self._table)
                    return
                if len(batch) > 1:
                    # Not a conflict, not an outage: something in the data. Find whose.
                    for i in batch:
                        self._write_batch(commands, [i], outcomes)
                    return
                outcomes[batch[0]] = _rejected(e, self._table)
                return
            except _SentAndLost as lost:
                in_doubt = True
                error: BaseException = lost
            except psycopg.Error as e:
                # Connecting failed (nothing sent), or reading back an outcome did.
                self._discard()
                error = e
            else:
                for i, ids_of_command in zip(
                    batch, _split(ids, events, batch, commands), strict=True
                ):
                    outcomes[i] = ids_of_command
                return
            failures += 1
            if time.monotonic() >= deadline:
                for i in batch:
                    outcomes[i] = _gave_up(error, self._table, in_doubt=in_doubt)
                return
            logger.warning(
                "writing to %s failed, retrying on a new connection: %s", self._table, error
            )
            time.sleep(min(backoff(failures, 0.05, 1.0), max(deadline - time.monotonic(), 0.0)))

    # -- statements ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: closing is all we want
                conn.close()

    def _insert(self, events: list[StoredEvent]) -> dict[_Key, int]:
        """One transaction, one round trip: the group's ids by (aggregate, version).

        Raises:
            _Refused: the server answered with an error; nothing is stored.
            _SentAndLost: the connection broke after the group was sent.
            psycopg.OperationalError: connecting failed; nothing was sent.
        """
        conn = self._connection()
        if self._traced is None:
            self._traced = has_trace_column(conn, self._table_parts)
        traced = self._traced
        query = self._queries.get(len(events))
        if query is None:
            row = sql.SQL("(%s, %s, %s, %s, %s)" if traced else "(%s, %s, %s, %s)")
            rows = sql.SQL(", ").join([row] * len(events))
            query = (self._heads[traced] + rows + self._tail).as_string(conn)
            if len(events) <= _CACHED_SIZES:  # the common sizes; a rare big save is composed anew
                self._queries[len(events)] = query
        if traced:
            params = [
                v
                for e in events
                for v in (
                    e.originator_id,
                    e.originator_version,
                    e.topic,
                    e.state,
                    getattr(e, "traceparent", None),
                )
            ]
        else:
            params = [
                v for e in events for v in (e.originator_id, e.originator_version, e.topic, e.state)
            ]
        try:
            with ClientCursor(conn) as cur:
                cur.execute(query, params)
                while cur.description is None and cur.nextset():
                    pass  # BEGIN, SET, LOCK, NOTIFY: no rows
                return {(r[0], r[1]): r[2] for r in cur.fetchall()}
        except psycopg.Error as e:
            if self._rolled_back(conn):
                raise _Refused(e) from e
            self._discard()
            raise _SentAndLost(str(e)) from e

    def _rolled_back(self, conn: psycopg.Connection[Any]) -> bool:
        """After an error: rolls back a failed transaction; True when the server is still there
        and the transaction is gone (so nothing of it was committed)."""
        if conn.closed or conn.info.transaction_status == TransactionStatus.UNKNOWN:
            return False
        if conn.info.transaction_status == TransactionStatus.INERROR:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                return False
        return conn.info.transaction_status == TransactionStatus.IDLE

    def _committed_ids(self, events: list[StoredEvent]) -> dict[_Key, int] | None:
        """After a lost commit: the group's ids if it committed, None if nothing of it did."""
        conn = self._connection()
        with conn.transaction():
            # SHARE conflicts with EXCLUSIVE: if our lost transaction still holds the table
            # (its COMMIT still in flight), this waits until it is decided either way.
            conn.execute(self._share_lock)
            rows = self._select_stored(conn, events)
        stored = {(r[0], r[1]): (r[2], r[3], bytes(r[4])) for r in rows}
        ours = all(stored.get(_key(e), (0, None, None))[1:] == (e.topic, e.state) for e in events)
        # A transaction is atomic: either every event of the group is there as we sent it,
        # or none of ours is (a row with another state under our key is another writer's).
        return {k: v[0] for k, v in stored.items()} if ours else None

    def _taken_keys(self, events: list[StoredEvent]) -> set[_Key]:
        """After a conflict: which of these (aggregate, version) keys are already stored."""
        return {(r[0], r[1]) for r in self._select_stored(self._connection(), events)}

    def _select_stored(
        self, conn: psycopg.Connection[Any], events: list[StoredEvent]
    ) -> list[tuple[Any, ...]]:
        ids = [e.originator_id for e in events]
        versions = [e.originator_version for e in events]
        return conn.execute(self._stored, (ids, versions)).fetchall()


def _key(e: StoredEvent) -> _Key:
    return (e.originator_id, e.originator_version)


def _first_claims(commands: Sequence[Command], waiting: list[int]) -> tuple[list[int], list[int]]:
    """Splits off the commands whose keys no earlier command in ``waiting`` claims.

    Two commands of one group that write the same aggregate version (threads that loaded the
    same version) would fail each other's transaction: the later one waits for the next
    transaction, where it conflicts with the stored event exactly as if it had come later.
    """
    claimed: set[_Key] = set()
    now: list[int] = []
    later: list[int] = []
    for i in waiting:
        keys = {_key(e) for e in commands[i]}
        if keys & claimed:
            later.append(i)
        else:
            now.append(i)
        claimed |= keys
    return now, later


def _split(
    ids: dict[_Key, int], events: list[StoredEvent], batch: list[int], commands: Sequence[Command]
) -> list[list[int]]:
    """Each command's notification ids, in the order of its events."""
    if len(ids) != len(events):
        msg = f"stored {len(ids)} rows for {len(events)} events"
        raise StoreError(msg)
    return [[ids[_key(e)] for e in commands[i]] for i in batch]


def _describe(command: Command) -> str:
    first = command[0]
    return f"aggregate {first.originator_id} version {first.originator_version}"


def _conflict(command: Command, table: str) -> ConcurrencyConflict:
    return ConcurrencyConflict(
        f"concurrent update of the same aggregate in {table!r}: {_describe(command)} is "
        "already stored; reload and retry the command"
    )


def _unavailable(e: BaseException, table: str) -> StoreUnavailable:
    error = StoreUnavailable(f"event store {table!r} refused the write, nothing stored: {e}")
    error.__cause__ = e
    return error


def _gave_up(e: BaseException, table: str, *, in_doubt: bool) -> StoreUnavailable:
    error: StoreUnavailable
    if in_doubt:
        error = CommitOutcomeUnknown(
            f"lost the connection to {table!r} during a commit and could not reconnect to "
            f"find out whether it happened: the events may or may not be stored ({e})"
        )
    else:
        error = StoreUnavailable(f"event store {table!r} unavailable, nothing stored: {e}")
    error.__cause__ = e
    return error


def _rejected(e: psycopg.Error, table: str) -> EventPlatformError:
    error: EventPlatformError
    if isinstance(e, psycopg.errors.UndefinedTable):
        error = SchemaError(f"{table!r} does not exist: run `eventplatform schema` first ({e})")
    else:
        error = StoreError(f"PostgreSQL refused the events for {table!r}, nothing stored: {e}")
    error.__cause__ = e
    return error
