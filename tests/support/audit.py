"""Seeing exactly-once: a projection that records every apply in order, and its audit.

``AuditedProjection`` inserts one row per apply (a bigserial gives the order), so applying an
event twice, skipping one, or applying an aggregate's events out of version order all show up
when the rows are compared with the event store (:func:`audit`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from domain import Product
from eventplatform.consumers.handlers import IdempotentEventHandler
from eventplatform.consumers.projection import Projection
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.relay.routing import DefaultTopicMapper


class AuditedProjection(Projection):
    """Appends ``(aggregate, version)`` for every event it applies."""

    name = "audited"
    default_table = "audited_applies"
    event_classes = (Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued)

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (seq bigserial PRIMARY KEY, aggregate uuid NOT NULL,"
                " version int NOT NULL)"
            ).format(sql.Identifier(self.table))
        )

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        cur.execute(
            sql.SQL("INSERT INTO {} (aggregate, version) VALUES (%s, %s)").format(
                sql.Identifier(self.table)
            ),
            (event.originator_id, event.originator_version),
        )


def _record_effect(cur: psycopg.Cursor[Any], event: Any) -> None:
    # No unique key on purpose: a second effect of one event must show, not fail.
    cur.execute(
        "INSERT INTO audited_effects (aggregate, version) VALUES (%s, %s)",
        (event.originator_id, event.originator_version),
    )


#: A handler whose every effect is a row (``tests.support.audit:AUDITED_HANDLER``).
AUDITED_HANDLER = IdempotentEventHandler(
    "audited-effects", _record_effect, event_classes=AuditedProjection.event_classes
)


def create_effects_table(dsn: str) -> None:
    """The table :data:`AUDITED_HANDLER` writes."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS audited_effects"
            " (seq bigserial, aggregate uuid, version int)"
        )


def effects_audit(dsn: str, *, log: str = "products") -> list[str]:
    """Events the handler's effects missed or repeated (order is not checked: unpartitioned
    handler workers promise none across workers)."""
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            sql.SQL("SELECT originator_id, originator_version FROM {}").format(
                sql.Identifier(f"{log}_events")
            )
        ).fetchall()
        effects = conn.execute("SELECT aggregate, version FROM audited_effects").fetchall()
    want = sorted((str(a), int(v)) for a, v in stored)
    got = sorted((str(a), int(v)) for a, v in effects)
    if want == got:
        return []
    repeated = [f"{e} x{got.count(e)}" for e in sorted(set(got)) if got.count(e) > 1]
    return [f"stored {len(want)} events, {len(got)} effects", *repeated[:20]]


def audit(dsn: str, *, log: str = "products", table: str = "audited_applies") -> list[str]:
    """Every way the applies differ from the store: duplicates, gaps, out of order.

    Returns:
        One line per problem; empty when each stored event was applied exactly once and
        each aggregate's events in version order.
    """
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            sql.SQL("SELECT originator_id, originator_version FROM {} ORDER BY 1, 2").format(
                sql.Identifier(f"{log}_events")
            )
        ).fetchall()
        applied = conn.execute(
            sql.SQL("SELECT aggregate, version FROM {} ORDER BY seq").format(sql.Identifier(table))
        ).fetchall()
    expected: dict[Any, list[int]] = defaultdict(list)
    for aggregate, version in stored:
        expected[aggregate].append(version)
    seen: dict[Any, list[int]] = defaultdict(list)
    for aggregate, version in applied:
        seen[aggregate].append(version)
    problems = []
    for aggregate in sorted(set(expected) | set(seen), key=str):
        want, got = expected.get(aggregate, []), seen.get(aggregate, [])
        if got != want:
            problems.append(f"{aggregate}: stored versions {want}, applied {got}")
    return problems


async def publish_stored(
    broker: NatsBroker,
    dsn: str,
    prefix: str,
    *,
    log: str = "products",
    after: int = 0,
    upto: int = 2**63 - 1,
) -> list[int]:
    """Publishes the stored events ``after < id <= upto`` exactly as the relay encodes them.

    Returns:
        Their notification ids.
    """
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM {} WHERE notification_id > %s AND notification_id <= %s"
                " ORDER BY notification_id"
            ).format(sql.Identifier(f"{log}_events")),
            (after, upto),
        ).fetchall()
    mapper = DefaultTopicMapper(prefix)
    messages = [
        OutgoingMessage(
            subject=mapper(topic),
            body=cloudevents.encode(
                log=log,
                notification_id=n,
                aggregate_id=aggregate,
                version=version,
                topic=topic,
                state=bytes(state),
            ),
            msg_id=cloudevents.message_id(log, n),
        )
        for n, aggregate, version, topic, state in rows
    ]
    if messages:
        await broker.publish_batch(messages)
    return [int(r[0]) for r in rows]
