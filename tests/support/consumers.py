"""Test support for consumer tests: CloudEvents built by hand, published straight to a stream."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventplatform.consumers.dead_letters import dead_letter_stream
from eventplatform.consumers.handlers import IdempotentEventHandler
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import RetryPolicy
from eventplatform.consumers.verification import StoreVerifier
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage, StreamSpec

#: For specs whose events are made by hand (no event store to verify them against).
TRUST_BROKER = StoreVerifier("broker")

#: Aggregate ids are UUIDs on the wire; specs name aggregates "A", "B"... and map them here.
_NAMESPACE = uuid.UUID("7d0c1f57-2b0e-4f6e-8f8a-3f1e0b5c2a11")
_NAMES: dict[str, str] = {}


def agg(name: str) -> str:
    """The aggregate id (a UUID string) a spec's aggregate ``name`` stands for."""
    aggregate = str(uuid.uuid5(_NAMESPACE, name))
    _NAMES[aggregate] = name
    return aggregate


def name_of(aggregate: str) -> str:
    """The spec's name of an aggregate id made by :func:`agg` (the id itself otherwise)."""
    return _NAMES.get(aggregate, aggregate)


def event_body(
    aggregate: str, version: int, sequence: int, *, log: str = "products", **data: Any
) -> bytes:
    """A CloudEvent as the relay would publish it (topic ``Thing.Happened``), for the
    aggregate the spec calls ``aggregate``."""
    return cloudevents.encode(
        log=log,
        notification_id=sequence,
        aggregate_id=agg(aggregate),
        version=version,
        topic="Thing.Happened",
        state=orjson.dumps({"n": version, **data}),
    )


async def publish(
    broker: NatsBroker, prefix: str, bodies: Sequence[bytes], *, first_msg_id: int = 0
) -> None:
    """Publishes bodies in order on ``<prefix>.Thing.Happened``, each with its own msg id."""
    for start in range(0, len(bodies), 2000):
        chunk = bodies[start : start + 2000]
        await broker.publish_batch(
            [
                OutgoingMessage(
                    subject=f"{prefix}.Thing.Happened",
                    body=body,
                    msg_id=f"test:{first_msg_id + start + i}",
                )
                for i, body in enumerate(chunk)
            ]
        )


async def stream_for(broker: NatsBroker, name: str) -> str:
    """Creates the test's own stream ``NAME`` on ``name.>`` and its dead-letter stream;
    returns the subject prefix."""
    await broker.ensure_stream(StreamSpec(name=name.upper(), subjects=(f"{name}.>",)))
    await broker.ensure_stream(dead_letter_stream(name.upper(), name))
    return name


def rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Runs a query and returns its rows."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL(query), params).fetchall()  # type: ignore[arg-type,unused-ignore]


async def subject_messages(broker: NatsBroker, stream: str, subject: str) -> list[Any]:
    """Every message stored in ``stream`` on ``subject``, in stream order."""
    info = await broker.js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await broker.js.get_msg(stream, seq)
        if m.subject == subject:
            found.append(m)
    return found


class OrderedProjection(Projection):
    """Records every applied event with its order; fails for the events in ``broken``.

    Events arrive as CloudEvent envelopes (no ``event_classes``): ``subject`` is the aggregate
    (``broken`` names it as the spec does, see :func:`agg`), ``aggregate_version`` the version.
    """

    name = "ordered"
    default_table = "ordered_events"

    def __init__(self, *, broken: set[tuple[str, int]] | None = None) -> None:
        super().__init__()
        self.broken = broken if broken is not None else set()

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (seq bigserial, aggregate text, version int)"
            ).format(sql.Identifier(self.table))
        )

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        if (name_of(event.subject), event.aggregate_version) in self.broken:
            msg = f"cannot apply {name_of(event.subject)} v{event.aggregate_version}"
            raise ValueError(msg)
        cur.execute(
            sql.SQL("INSERT INTO {} (aggregate, version) VALUES (%s, %s)").format(
                sql.Identifier(self.table)
            ),
            (event.subject, event.aggregate_version),
        )


def applied(dsn: str, table: str = "ordered_events") -> list[tuple[str, int]]:
    """(aggregate name, version) in the order the projection applied them."""
    with psycopg.connect(dsn) as conn:
        return [
            (name_of(r[0]), r[1])
            for r in conn.execute(
                sql.SQL("SELECT aggregate, version FROM {} ORDER BY seq").format(
                    sql.Identifier(table)
                )
            ).fetchall()
        ]


def _record_effect(cur: psycopg.Cursor[Any], event: Any) -> None:
    cur.execute("INSERT INTO effects VALUES ('cli-handler', %s, %s)", (event.id, event.subject))


#: A handler the CLI can load by reference (``tests.support.consumers:EFFECT_HANDLER``).
EFFECT_HANDLER = IdempotentEventHandler("cli-handler", _record_effect)


async def worker_for(
    projection: Projection,
    broker: NatsBroker,
    pool: ConnectionPool[Any],
    prefix: str,
    *,
    batch_size: int,
    ack_wait: float,
) -> ProjectionWorker:
    """A started worker on the test's stream, retrying quickly (2 attempts, 10 ms)."""
    worker = ProjectionWorker(
        projection=projection,
        broker=broker,
        pool=pool,
        config=WorkerConfig(
            # hand-made events, no event store: trust the broker
            verification="broker",
            stream=prefix.upper(),
            filter_subject=f"{prefix}.>",
            batch_size=batch_size,
            fetch_timeout=0.3,
            ack_wait=ack_wait,
            policy=RetryPolicy(attempts=2, initial=0.01, cap=0.01),
        ),
    )
    await worker.start()
    return worker
