"""The baselines each figure is measured against, in the same run.

* physical limits: a raw psycopg insert of the same rows, raw JetStream ``publish_async`` of the
  same messages, a raw JetStream pull + ack of the same messages;
* peers: eventsourcing's own ``ProjectionRunner`` into the same read-model table, and a
  seed-style polling outbox (``SELECT ... FOR UPDATE SKIP LOCKED``, publish, mark published).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import nats.js.errors
import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection as ESProjection
from eventsourcing.projection import ProjectionRunner
from nats.js import JetStreamContext, api
from psycopg import sql

from eventplatform.consumers.acking import ack_all
from eventplatform.messagebus.nats_broker import OutgoingMessage
from eventplatform.store.postgres import eventsourcing_env
from projections import ProductViewProjection

# -- write limit ------------------------------------------------------------------------------

RAW_TABLE = "raw_events"


def create_raw_table(conn: psycopg.Connection[Any], events_table: str) -> None:
    """A table of the same shape (columns, keys, index) as the event store's."""
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(RAW_TABLE), sql.Identifier(events_table)
        )
    )
    conn.commit()


_RAW_INSERT = sql.SQL(
    "INSERT INTO {} (originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s)"
).format(sql.Identifier(RAW_TABLE))


def raw_insert(conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]], batch: int) -> None:
    """Inserts rows ``batch`` to a transaction (1: one committed INSERT per row)."""
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        with conn.transaction(), conn.cursor() as cur:
            if len(chunk) == 1:
                cur.execute(_RAW_INSERT, chunk[0], prepare=True)
            else:
                cur.executemany(_RAW_INSERT, chunk)


# -- relay limit ------------------------------------------------------------------------------


async def raw_publish_async(
    js: JetStreamContext, messages: Sequence[OutgoingMessage], batch: int
) -> None:
    """``publish_async`` of the messages ``batch`` at a time, each batch's acks gathered."""
    for start in range(0, len(messages), batch):
        futures = [
            await js.publish_async(m.subject, m.body, headers={"Nats-Msg-Id": m.msg_id})
            for m in messages[start : start + batch]
        ]
        await asyncio.gather(*futures)


# -- relay peer: a seed-style polling outbox --------------------------------------------------

OUTBOX_TABLE = "outbox"


def create_outbox(conn: psycopg.Connection[Any]) -> None:
    """The seed's outbox: a second table, a published flag, polled by id."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (id bigserial PRIMARY KEY, subject text NOT NULL,"
            " msg_id text NOT NULL, payload bytea NOT NULL, published_at timestamptz);"
            "CREATE INDEX IF NOT EXISTS outbox_unpublished ON {t} (id) WHERE published_at IS NULL"
        ).format(t=sql.Identifier(OUTBOX_TABLE))
    )
    conn.commit()


def fill_outbox(conn: psycopg.Connection[Any], messages: Sequence[OutgoingMessage]) -> None:
    """Copies messages into the outbox, unpublished."""
    with (
        conn.cursor() as cur,
        cur.copy(
            sql.SQL("COPY {} (subject, msg_id, payload) FROM STDIN").format(
                sql.Identifier(OUTBOX_TABLE)
            )
        ) as copy,
    ):
        for m in messages:
            copy.write_row((m.subject, m.msg_id, m.body))
    conn.commit()


class PollingOutbox:
    """The seed-style relay: poll, lock a batch, publish each awaiting its ack, mark published.

    Args:
        conn: an async connection (not autocommit: the batch's transaction spans the publish).
        js: JetStream context.
        batch_size: rows locked per poll (the seed's 100).
        interval: seconds between polls when the outbox is empty (the seed's 1 s).
        on_published: called with each published message id (latency measurement).
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        js: JetStreamContext,
        *,
        batch_size: int = 100,
        interval: float = 1.0,
        on_published: Callable[[str], None] | None = None,
    ) -> None:
        self._conn = conn
        self._js = js
        self._batch_size = batch_size
        self._interval = interval
        self._on_published = on_published
        self._select = sql.SQL(
            "SELECT id, subject, msg_id, payload FROM {} WHERE published_at IS NULL"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(sql.Identifier(OUTBOX_TABLE))
        self._mark = sql.SQL("UPDATE {} SET published_at = now() WHERE id = ANY(%s)").format(
            sql.Identifier(OUTBOX_TABLE)
        )

    async def poll_once(self) -> int:
        """Publishes one batch; returns how many rows it published."""
        async with self._conn.transaction():
            cur = await self._conn.execute(self._select, (self._batch_size,))
            rows = await cur.fetchall()
            for _, subject, msg_id, payload in rows:
                await self._js.publish(subject, bytes(payload), headers={"Nats-Msg-Id": msg_id})
                if self._on_published is not None:
                    self._on_published(msg_id)
            if rows:
                await self._conn.execute(self._mark, ([r[0] for r in rows],))
        return len(rows)

    async def drain(self, count: int) -> int:
        """Polls back to back until at least ``count`` rows went out or the outbox is empty.

        Returns:
            How many rows it published (whole batches: may exceed ``count``).
        """
        done = 0
        while done < count:
            published = await self.poll_once()
            if not published:
                break
            done += published
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Polls at its interval until ``stop`` is set."""
        while not stop.is_set():
            if not await self.poll_once():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval)


# -- projection limit -------------------------------------------------------------------------


class RawPuller:
    """The consume limit: a fresh durable pull consumer, fetch a batch, ack it, repeat.

    Args:
        js: JetStream context.
        stream: the stream to consume.
        subject: filter subject.
        batch: messages per fetch (ours fetches the same number).
    """

    def __init__(self, js: JetStreamContext, stream: str, subject: str, batch: int) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._batch = batch
        self._sub: Any = None

    async def start(self) -> None:
        """Creates the consumer from the stream's start."""
        durable = "raw_pull"
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self._stream, durable)
        await self._js.add_consumer(
            self._stream,
            api.ConsumerConfig(
                durable_name=durable,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                max_ack_pending=max(1000, self._batch * 2),
                filter_subject=self._subject,
            ),
        )
        self._sub = await self._js.pull_subscribe_bind(durable=durable, stream=self._stream)

    async def pull(self, count: int) -> int:
        """Fetches and acks until ``count`` messages went through; returns how many did."""
        got = 0
        while got < count:
            msgs = await self._sub.fetch(min(self._batch, count - got), timeout=5)
            await ack_all(msgs)
            got += len(msgs)
        return got


# -- projection and rebuild peer: eventsourcing's ProjectionRunner ----------------------------


class PeerProducts(Application[Any]):
    """The products log as eventsourcing sees it (the runner constructs it from an env)."""

    name = "products"


class PeerProductView(PostgresTrackingRecorder):
    """eventsourcing's materialised view: the ProductView table, tracking per event."""

    table = "product_view_peer"

    def apply(self, event: Any, tracking: Tracking) -> None:
        """Applies one event and records its tracking row in one transaction."""
        projection = ProductViewProjection(table=self.table)
        with self.datastore.transaction(commit=True) as cur:
            projection.apply(cur, event)
            self._insert_tracking(cur, tracking)


class PeerProjection(ESProjection[PeerProductView]):
    """eventsourcing projection feeding :class:`PeerProductView`."""

    name = "peer_view"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Hands every event to the view."""
        self.view.apply(domain_event, tracking)


def create_peer_table(conn: psycopg.Connection[Any]) -> None:
    """The peer's read model: the same shape as ours."""
    with conn.cursor() as cur:
        ProductViewProjection(table=PeerProductView.table).create_tables(cur)
    conn.commit()


def run_projection_runner(dsn: str, head: int, timeout: float = 600.0) -> None:
    """Runs eventsourcing's ProjectionRunner from the start of the log until ``head``."""
    env = eventsourcing_env(dsn, pool_size=2, create_table=True)
    with ProjectionRunner(
        application_class=PeerProducts,
        projection_class=PeerProjection,
        view_class=PeerProductView,
        env=env,
    ) as runner:
        runner.wait(head, timeout=timeout)
