"""Test support for relay specs: a relay wired by hand, products, forgeries, stream content."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import uuid4

import nats
import orjson
import psycopg

from domain import CreateProduct, Products
from eventplatform.leases.leadership import Leadership, PostgresLeases
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.relay.event_log import Notification, PostgresEventLog
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.relay import Relay, RelayConfig
from eventplatform.relay.routing import DefaultTopicMapper, TopicMapper
from eventplatform.settings import Settings


def create_products(settings: Settings, n: int, prefix: str = "P") -> list[int]:
    """Creates ``n`` products; returns their notification ids."""
    app = Products(settings)
    try:
        return [
            app.create(
                CreateProduct(name=f"{prefix}{i}", sku=f"{prefix}{i}", price=Decimal(1))
            ).position
            for i in range(n)
        ]
    finally:
        app.close()


def stored_event(dsn: str, notification_id: int, log: str = "products") -> Notification:
    """The stored event ``notification_id`` of ``log``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            f" FROM {log}_events WHERE notification_id = %s",
            (notification_id,),
        ).fetchone()
    assert row is not None, f"no notification {notification_id}"
    return Notification(row[0], row[1], row[2], row[3], bytes(row[4]))


def relays_body(event: Notification, log: str = "products") -> bytes:
    """The body the relay publishes for ``event``."""
    return cloudevents.encode(
        log=log,
        notification_id=event.id,
        aggregate_id=event.originator_id,
        version=event.originator_version,
        topic=event.topic,
        state=event.state,
    )


def tampered_body(event: Notification, log: str = "products") -> bytes:
    """The relay's body of ``event`` with other data: a forger's copy."""
    state = orjson.loads(event.state)
    state["name"] = "FORGED"
    return cloudevents.encode(
        log=log,
        notification_id=event.id,
        aggregate_id=event.originator_id,
        version=event.originator_version,
        topic=event.topic,
        state=orjson.dumps(state),
    )


def another_databases_body(notification_id: int, log: str = "products") -> bytes:
    """What another database's relay publishes as ``<log>:<notification_id>``."""
    return cloudevents.encode(
        log=log,
        notification_id=notification_id,
        aggregate_id=uuid4(),
        version=1,
        topic="Product.Created",
        state=b'{"name":"elsewhere","sku":"E1","price":"1"}',
    )


async def publish_as(js: Any, subject: str, body: bytes, msg_id: str) -> int:
    """Publishes ``body`` under ``msg_id`` as anyone could; returns its stream sequence."""
    ack = await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
    return int(ack.seq)


@dataclass(frozen=True, slots=True)
class InStream:
    """A message as a spec looks at it."""

    seq: int
    msg_id: str | None
    sequence: Any  # the CloudEvent's ``sequence``, if the body is one
    data: bytes
    headers: dict[str, str]


async def stream_content(url: str, stream: str) -> list[InStream]:
    """Every message of ``stream``, in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            try:
                sequence = int(orjson.loads(msg.data or b"{}")["sequence"])
            except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
                sequence = None
            headers = dict(msg.headers or {})
            out.append(
                InStream(seq, headers.get("Nats-Msg-Id"), sequence, msg.data or b"", headers)
            )
        return out
    finally:
        await nc.close()


def genuine_sequences(content: Sequence[InStream], dsn: str) -> list[int]:
    """The notification ids of the messages that carry their stored event, in stream order."""
    out = []
    for m in content:
        if not (m.msg_id or "").startswith("products:"):
            continue
        n = int(m.msg_id.split(":")[1])  # type: ignore[union-attr]
        try:
            if m.data == relays_body(stored_event(dsn, n)):
                out.append(n)
        except AssertionError:
            continue
    return out


async def relay_position(dsn: str, log: str = "products") -> int:
    """The recorded relay position of ``log``."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT position FROM eventplatform_relay_positions WHERE log = %s", (log,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def until_position(dsn: str, at_least: int, timeout: float = 30) -> None:
    """Polls the recorded position (written by the relay's connection: no event to await)."""
    async with asyncio.timeout(timeout):
        while True:
            if await relay_position(dsn) >= at_least:
                return
            await asyncio.sleep(0.05)


class RelayParts:
    """A relay wired by hand, so a spec can play leader, deposed leader, crash and forger."""

    def __init__(self, settings: Settings, conns: list[psycopg.AsyncConnection[Any]]) -> None:
        lease_conn, reader, listener = conns
        self.reader = reader
        self.leases = PostgresLeases(lease_conn)
        self.positions = PostgresRelayPositions(reader)
        self.log = PostgresEventLog(reader, listener, "products")
        self.settings = settings
        self.broker = NatsBroker(settings.nats_servers)

    def relay(
        self, lease: Leadership | None = None, mapper: TopicMapper | None = None, **config: Any
    ) -> Relay:
        """A relay of ``products`` on the settings' stream."""
        return Relay(
            log=self.log,
            broker=self.broker,
            positions=self.positions,
            mapper=mapper or DefaultTopicMapper(self.settings.subject_prefix),
            config=RelayConfig(stream=self.settings.stream, poll_interval=0.1, **config),
            lease=lease,
        )

    @property
    def subject(self) -> str:
        """The subject ``Product.Created`` events are published on."""
        return f"{self.settings.subject_prefix}.Product.Created"

    async def start(self) -> None:
        await self.broker.connect()
        await self.broker.ensure_stream(stream_spec(self.settings))


async def open_parts(settings: Settings) -> tuple[RelayParts, list[psycopg.AsyncConnection[Any]]]:
    """Connects the parts; close the connections and ``parts.broker`` after."""
    conns = [await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) for _ in range(3)]
    parts = RelayParts(settings, conns)
    await parts.start()
    return parts, conns
