"""Test support for consumer tests: CloudEvents built by hand, published straight to a stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

from eventplatform import cloudevents
from eventplatform.nats_broker import NatsBroker, OutgoingMessage, StreamSpec


def event_body(
    aggregate: str, version: int, sequence: int, *, log: str = "products", **data: Any
) -> bytes:
    """A CloudEvent as the relay would publish it (topic ``Thing.Happened``)."""
    return cloudevents.encode(
        log=log,
        notification_id=sequence,
        aggregate_id=aggregate,
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
    """Creates the test's own stream ``NAME`` on ``name.>``; returns the subject prefix."""
    await broker.ensure_stream(StreamSpec(name=name.upper(), subjects=(f"{name}.>",)))
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
