"""What every figure shares: sizes, results, throwaway databases and streams, backlogs.

Each figure gets a fresh database (created on the server the run uses, dropped after) and its
own JetStream streams, so figures never see each other's rows or messages.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from uuid import uuid4

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from domain import CreateProduct, Products
from domain.commands import ChangePrice, RenameProduct
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.relay.event_log import PostgresEventLog
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.relay import Relay, RelayConfig
from eventplatform.relay.routing import DefaultTopicMapper
from eventplatform.settings import Settings, load_settings
from eventplatform.store.schema import create_schema, events_table
from projections import ProductViewProjection

LOG = "products"


@dataclass(frozen=True, slots=True)
class Scale:
    """How many events or commands each figure uses.

    Attributes:
        write_single: commands of one event each, per side.
        write_batched: events saved 100 aggregates per save, per side.
        write_concurrent: commands per writer count (1, 4, 12 writer threads), per side.
        relay: backlog events relayed by ours and published by the raw baseline.
        outbox: backlog events published by the polling outbox (it is the slow one).
        projection: stream messages applied by ours and pulled by the raw baseline.
        runner: events the eventsourcing ProjectionRunner processes.
        latency_seconds: how long the fixed load runs for ours.
        outbox_latency_seconds: how long it runs for the polling outbox.
        rebuild: events replayed into a fresh read model.
        memory: backlog the relay and projection processes work through.
        rounds: interleaved rounds (ours, baseline, ours, baseline, ...).
        partitioned: events a 5 ms handler works through, per side (partitions figure).
    """

    write_single: int = 600
    write_batched: int = 6_000
    write_concurrent: int = 1_200
    relay: int = 20_000
    outbox: int = 4_000
    projection: int = 20_000
    runner: int = 4_000
    latency_seconds: float = 10.0
    outbox_latency_seconds: float = 5.0
    rebuild: int = 20_000
    memory: int = 200_000
    rounds: int = 2
    partitioned: int = 600

    def scaled(self, factor: float) -> Scale:
        """The same proportions times ``factor`` (at least a few events each)."""

        def n(value: int) -> int:
            return max(int(value * factor), 60)

        return replace(
            self,
            write_single=n(self.write_single),
            write_batched=max(n(self.write_batched) // 100 * 100, 200),
            write_concurrent=n(self.write_concurrent),
            relay=n(self.relay),
            outbox=n(self.outbox),
            projection=n(self.projection),
            runner=n(self.runner),
            latency_seconds=max(self.latency_seconds * factor, 1.0),
            outbox_latency_seconds=max(self.outbox_latency_seconds * factor, 2.0),
            rebuild=n(self.rebuild),
            memory=max(n(self.memory), 12_000),
            partitioned=n(self.partitioned),
        )


QUICK = Scale()
FULL = Scale(
    write_single=3_000,
    write_batched=50_000,
    write_concurrent=6_000,
    relay=200_000,
    outbox=20_000,
    projection=100_000,
    runner=20_000,
    latency_seconds=60.0,
    outbox_latency_seconds=20.0,
    rebuild=200_000,
    memory=1_000_000,
    rounds=3,
    partitioned=2_400,
)


@dataclass(slots=True)
class Result:
    """One figure beside one baseline.

    ``ratio`` is ours / baseline; for throughput higher is better, for latency and memory
    lower is better (``higher_is_better`` says which).
    """

    name: str
    variant: str
    unit: str
    value: float
    baseline: str
    baseline_value: float
    target: str
    met: bool
    higher_is_better: bool = True
    goal: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ours / baseline."""
        return self.value / self.baseline_value if self.baseline_value else float("inf")

    def as_json(self) -> dict[str, Any]:
        """The JSON entry of the issue's shape, plus variant, target and extras."""
        return {
            "name": self.name,
            "variant": self.variant,
            "unit": self.unit,
            "value": round(self.value, 3),
            "baseline": self.baseline,
            "baseline_value": round(self.baseline_value, 3),
            "ratio": round(self.ratio, 4),
            "target": self.target,
            "met": self.met,
            **self.extra,
        }


def throughput(
    name: str,
    variant: str,
    ours: float,
    baseline: str,
    theirs: float,
    *,
    at_least: float,
) -> Result:
    """A throughput pair whose target is ``ours / theirs >= at_least``."""
    ratio = ours / theirs if theirs else float("inf")
    word = f"≥ {at_least:g}x" if at_least >= 1 else f"≥ {at_least:g}"
    return Result(
        name, variant, "events/s", ours, baseline, theirs, word, ratio >= at_least, goal=at_least
    )


class Stopwatch:
    """Accumulates elapsed seconds over several timed sections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Adds the body's wall time to the total."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    @property
    def rate(self) -> float:
        """count / seconds."""
        return self.count / self.seconds if self.seconds else 0.0


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server, another database."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def unique(prefix: str) -> str:
    """A short random name, safe for databases, streams and subjects."""
    return f"{prefix}_{secrets.token_hex(4)}"


@contextlib.contextmanager
def fresh_database(server_dsn: str, prefix: str) -> Iterator[str]:
    """Creates an empty database with the platform schema and drops it afterwards."""
    name = unique(f"bench_{prefix}")
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_dbname(server_dsn, name)
    try:
        create_schema(dsn, logs=[LOG], projections=[ProductViewProjection()])
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def settings_for(dsn: str, nats_url: str, name: str, **overrides: Any) -> Settings:
    """Platform settings on this figure's database and its own stream and subject prefix."""
    values: dict[str, Any] = {
        "dsn": dsn,
        "log": LOG,
        "nats_url": nats_url,
        "stream": name.upper(),
        "subject_prefix": name,
        "pool_size": 2,
    }
    values.update(overrides)
    return load_settings({}, **values)


def stored_rows(conn: psycopg.Connection[Any], after: int) -> list[tuple[Any, ...]]:
    """(originator_id, originator_version, topic, state) of the events after ``after``, in order:
    the very rows a raw baseline re-inserts."""
    rows = conn.execute(
        sql.SQL(
            "SELECT originator_id, originator_version, topic, state FROM {}"
            " WHERE notification_id > %s ORDER BY notification_id"
        ).format(sql.Identifier(events_table(LOG))),
        (after,),
    ).fetchall()
    conn.commit()
    return rows


def template_rows(settings: Settings) -> list[tuple[str, bytes]]:
    """(topic, state) of a real Created, Renamed and PriceChanged, saved by the application.

    Backlogs are these three rows repeated for fresh aggregates: the events decode like any
    the application wrote, without paying for the application's write path to build them.
    """
    app = Products(settings)
    try:
        created = app.create(CreateProduct(name="Template", sku="TPL-1", price=Decimal("9.99")))
        app.rename(RenameProduct(product_id=created.aggregate_id, name="Template renamed"))
        app.change_price(ChangePrice(product_id=created.aggregate_id, price=Decimal("10.50")))
    finally:
        app.close()
    with psycopg.connect(settings.require_dsn()) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT topic, state FROM {} WHERE originator_id = %s ORDER BY originator_version"
            ).format(sql.Identifier(events_table(LOG))),
            (created.aggregate_id,),
        ).fetchall()
    return [(r[0], bytes(r[1])) for r in rows]


def copy_backlog(dsn: str, templates: list[tuple[str, bytes]], events: int) -> int:
    """Appends ``events`` stored events (3 per aggregate, in order) by COPY; returns the head."""
    table = sql.Identifier(events_table(LOG))
    with psycopg.connect(dsn) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY {} (originator_id, originator_version, topic, state) FROM STDIN"
                ).format(table)
            ) as copy,
        ):
            written = 0
            while written < events:
                aggregate = uuid4()
                for version, (topic, state) in enumerate(templates, start=1):
                    if written == events:
                        break
                    copy.write_row((aggregate, version, topic, state))
                    written += 1
        row = conn.execute(sql.SQL("SELECT max(notification_id) FROM {}").format(table)).fetchone()
        conn.execute(sql.SQL("ANALYZE {}").format(table))
    return int(row[0]) if row and row[0] is not None else 0


def head_of(dsn: str) -> int:
    """The highest notification id in the log."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT max(notification_id) FROM {}").format(sql.Identifier(events_table(LOG)))
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def relay_backlog(settings: Settings, broker: NatsBroker) -> int:
    """Publishes the whole log to the settings' stream with the platform's relay (untimed)."""
    await broker.ensure_stream(stream_spec(settings))
    dsn = settings.require_dsn()
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as reader,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
    ):
        relay = Relay(
            log=PostgresEventLog(reader, listener, settings.log),
            broker=broker,
            positions=PostgresRelayPositions(reader),
            mapper=DefaultTopicMapper(settings.subject_prefix),
            config=RelayConfig(
                stream=settings.stream,
                batch_size=settings.relay_batch_size,
                partitions=settings.partitions,
                subject_prefix=settings.subject_prefix,
            ),
        )
        while await relay.relay_once() is not None:
            pass
        return relay.position
