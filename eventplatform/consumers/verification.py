"""Checking what a message claims against the event store (DESIGN invariant 8).

Anyone who can publish on an event subject can send a well-formed CloudEvent that names a
real log, a real aggregate and a position far ahead. Were it believed, a projection would move
its position there and skip every real event in between, and a handler would run side effects
for data nobody wrote. So before a message moves a position or reaches user code, its claims
are checked against the stored event at that position, in the consumer's own transaction:

* the log has a table here, and an event at ``sequence``;
* that event is the one the message says: aggregate id, version, topic, CloudEvents ``id``,
  ``time`` and schema version;
* the message's ``data`` is the stored event's (the relay splices the stored bytes verbatim,
  so a byte comparison almost always settles it; otherwise the parsed JSON is compared).

Both the comparison and the gap fill come from :mod:`eventplatform.messagebus.stored`, the
relay's own definition of a stored event's message, so an event stored in the older tagged
form verifies as genuine.

A message that fails is *forged* (or foreign): it is dead-lettered with the reason, never
parks an aggregate and never moves a position.

Verification needs the event store in the consumer's database. A read model that lives apart
from the store runs with ``verification="broker"`` (``APP_EVENT_VERIFICATION=broker``): it
then relies on NATS authorisation, with only the relay's credentials allowed to publish on
event subjects (see README, "Authorisation on NATS").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from eventplatform.errors import ConfigurationError
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.stored import StoredEvent, difference, message_for
from eventplatform.partitions import partition_sql
from eventplatform.store.schema import events_table

#: ``store``: check every message against the event store (default); ``broker``: trust what
#: NATS authorisation lets through (for read models in another database).
Verification = Literal["store", "broker"]
VERIFICATIONS: tuple[Verification, ...] = ("store", "broker")


class StoreVerifier:
    """Verifies messages against the stored events, with the caller's cursor.

    Args:
        mode: ``"store"`` to verify, ``"broker"`` to accept every well-formed message.
    """

    def __init__(self, mode: Verification = "store") -> None:
        if mode not in VERIFICATIONS:
            msg = f"event verification must be one of {VERIFICATIONS}, got {mode!r}"
            raise ConfigurationError(msg)
        self.mode = mode
        self._tables: set[str] = set()

    def verify(self, cur: psycopg.Cursor[Any], envelopes: Sequence[CloudEvent]) -> list[str | None]:
        """Checks each envelope; returns, per envelope, None when it is the stored event at
        its position, else why it is not (the dead letter's error)."""
        if self.mode == "broker" or not envelopes:
            return [None] * len(envelopes)
        verdicts: list[str | None] = [None] * len(envelopes)
        by_log: dict[str, list[int]] = defaultdict(list)
        for index, envelope in enumerate(envelopes):
            by_log[envelope.source].append(index)
        for log, indexes in by_log.items():
            if not self._has_table(cur, log):
                reason = (
                    f"forged or foreign: log {log!r} has no table {events_table(log)!r} in this "
                    "database, so the event cannot be verified (a read model apart from the "
                    "store runs with APP_EVENT_VERIFICATION=broker)"
                )
                for index in indexes:
                    verdicts[index] = reason
                continue
            stored = self._stored(cur, log, [envelopes[i].sequence for i in indexes])
            for index in indexes:
                verdicts[index] = _compare(envelopes[index], stored.get(envelopes[index].sequence))
        return verdicts

    def _has_table(self, cur: psycopg.Cursor[Any], log: str) -> bool:
        if log in self._tables:
            return True
        cur.execute("SELECT to_regclass(%s)", (sql.Identifier(events_table(log)).as_string(cur),))
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            self._tables.add(log)  # tables are never dropped under a running consumer
            return True
        return False

    def missing(
        self,
        cur: psycopg.Cursor[Any],
        log: str,
        *,
        after: int,
        upto: int,
        carried: set[int],
        limit: int,
        partition: tuple[int, int] | None = None,
    ) -> tuple[list[bytes], int]:
        """The stored events in ``after < id <= upto`` that ``carried`` lacks, as messages.

        A worker must not move its position past events it was not given (a replayed later
        event, or a stream that lost messages): it applies these, read from the store, in
        their place. Encoded exactly as the relay encodes them, so they take the same path.

        Args:
            cur: a cursor of the batch's transaction.
            log: the log.
            after: the committed position.
            upto: the highest position the batch carries.
            carried: the positions the batch carries.
            limit: at most this many stored events are looked at.
            partition: ``(k, n)``: only events of partition k of n are looked at.

        Returns:
            The missing events' messages in log order, and the highest position looked at
            (``upto`` unless ``limit`` cut the range short).
        """
        if self.mode == "broker" or not self._has_table(cur, log):
            return [], upto
        only: sql.Composable = sql.SQL("")
        if partition is not None:
            only = sql.SQL(" AND {} = {}").format(
                partition_sql("originator_id", partition[1]), sql.Literal(partition[0])
            )
        cur.execute(
            sql.SQL(
                "SELECT notification_id FROM {} WHERE notification_id > %s"
                " AND notification_id <= %s{} ORDER BY notification_id LIMIT %s"
            ).format(sql.Identifier(events_table(log)), only),
            (after, upto, limit),
        )
        ids = [int(r[0]) for r in cur.fetchall()]
        reached = ids[-1] if len(ids) == limit else upto
        gaps = [n for n in ids if n not in carried]
        if not gaps:
            return [], reached
        stored = self._stored(cur, log, gaps)
        return [message_for(stored[n]) for n in gaps], reached

    @staticmethod
    def _stored(cur: psycopg.Cursor[Any], log: str, positions: list[int]) -> dict[int, StoredEvent]:
        cur.execute(
            sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM {} WHERE notification_id = ANY(%s)"
            ).format(sql.Identifier(events_table(log))),
            (positions,),
        )
        return {
            int(r[0]): StoredEvent(log, int(r[0]), r[1], int(r[2]), str(r[3]), bytes(r[4]))
            for r in cur.fetchall()
        }


def _compare(envelope: CloudEvent, stored: StoredEvent | None) -> str | None:
    if stored is None:
        return f"forged position: the store holds no event at {envelope.source}:{envelope.sequence}"
    different = difference(envelope, stored)
    return None if different is None else f"forged: {different}"
