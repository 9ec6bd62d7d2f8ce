"""Reading a log's notifications from the eventsourcing table, the outbox itself.

Notification ids come in commit order (the recorder's table lock) but may have holes where an
insert rolled back: the reader asks for ids greater than its position and never waits on a hole.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventplatform.store.postgres import translate
from eventplatform.store.schema import events_table


@dataclass(frozen=True, slots=True)
class Notification:
    """One stored event with its position in the log."""

    id: int
    originator_id: Any
    originator_version: int
    topic: str
    state: bytes


class PostgresEventLog:
    """Reads a log in batches and waits for NOTIFY with a timed re-poll as fallback.

    eventsourcing's own ``subscribe()`` wakes only on NOTIFY and dies with its LISTEN
    connection; here a lost notification costs at most one poll interval.

    Args:
        reader: an autocommit async connection for SELECTs.
        listener: an autocommit async connection that LISTENs (may be the same object only
            if the caller never reads while waiting; keep them separate).
        log: the log (application) name.
    """

    def __init__(
        self,
        reader: psycopg.AsyncConnection[Any],
        listener: psycopg.AsyncConnection[Any],
        log: str,
    ) -> None:
        self.log = log
        self._reader = reader
        self._listener = listener
        table = sql.Identifier(events_table(log))
        self._channel = sql.Identifier(events_table(log))
        self._select = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(table)
        self._between = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {} WHERE notification_id > %s AND notification_id <= %s"
            " ORDER BY notification_id"
        ).format(table)
        self._by_ids = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {} WHERE notification_id = ANY(%s)"
        ).format(table)
        self._ids = sql.SQL(
            "SELECT notification_id FROM {} WHERE notification_id > %s AND notification_id <= %s"
            " ORDER BY notification_id LIMIT %s"
        ).format(table)
        self._head = sql.SQL("SELECT max(notification_id) FROM {}").format(table)
        self._sizes = sql.SQL(
            "SELECT coalesce(max(octet_length(state)), 0),"
            " count(*) FILTER (WHERE octet_length(state) > %s)"
            " FROM {} WHERE notification_id > %s"
        ).format(table)
        self._listening = False

    async def listen(self) -> None:
        """Starts listening for the recorder's NOTIFY on this log's channel."""
        try:
            await self._listener.execute(sql.SQL("LISTEN {}").format(self._channel))
        except psycopg.OperationalError as e:
            raise translate(e, f"listening on {self.log!r}") from e
        self._listening = True

    async def read(self, after: int, limit: int) -> list[Notification]:
        """Returns up to ``limit`` notifications with ids greater than ``after``, in order."""
        try:
            cur = await self._reader.execute(self._select, (after, limit), prepare=True)
            rows = await cur.fetchall()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading log {self.log!r}") from e
        return [Notification(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    async def between(self, after: int, upto: int) -> list[Notification]:
        """Returns every notification with an id greater than ``after`` and up to ``upto``."""
        if upto <= after:
            return []
        try:
            cur = await self._reader.execute(self._between, (after, upto))
            rows = await cur.fetchall()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading log {self.log!r}") from e
        return [Notification(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    async def fetch(self, ids: list[int]) -> dict[int, Notification]:
        """Returns the notifications with these ids (absent ones are left out)."""
        if not ids:
            return {}
        try:
            cur = await self._reader.execute(self._by_ids, (ids,))
            rows = await cur.fetchall()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading log {self.log!r}") from e
        return {r[0]: Notification(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows}

    async def ids(self, after: int, upto: int, limit: int) -> list[int]:
        """Returns up to ``limit`` notification ids in ``(after, upto]``, in order (no state)."""
        try:
            cur = await self._reader.execute(self._ids, (after, upto, limit))
            rows = await cur.fetchall()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading log {self.log!r}") from e
        return [int(r[0]) for r in rows]

    async def state_sizes(self, after: int, limit: int) -> tuple[int, int]:
        """The largest stored state after ``after``, and how many states exceed ``limit`` bytes.

        Only the part of the log the relay has yet to publish: what was published fitted, and
        what did not is recorded as oversized.
        """
        try:
            cur = await self._reader.execute(self._sizes, (limit, after))
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the event sizes of {self.log!r}") from e
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def head(self) -> int:
        """Returns the highest notification id in the log (0 when empty)."""
        try:
            cur = await self._reader.execute(self._head)
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the head of {self.log!r}") from e
        return int(row[0]) if row and row[0] is not None else 0

    async def wait(self, timeout: float) -> bool:
        """Waits for a NOTIFY or ``timeout`` seconds, whichever comes first.

        Returns:
            True when woken by a notification, False on timeout.
        """
        if not self._listening:
            await asyncio.sleep(timeout)
            return False
        try:
            async for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.OperationalError as e:
            raise translate(e, f"waiting for notifications on {self.log!r}") from e
        return False
