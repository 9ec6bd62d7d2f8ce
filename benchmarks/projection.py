"""``projection``: JetStream messages into the read model, with tracking, exactly once.

Ours is :class:`eventplatform.worker.ProjectionWorker` feeding ``ProductViewProjection``
(fetch, decode, apply the batch and record the position in one transaction, ack after commit).
The limit pulls and acks the same messages with a raw durable consumer, the same batch size.
The peer is eventsourcing's ``ProjectionRunner`` applying the same events (read from the store,
the only way it reads) into a table of the same shape, one tracking transaction per event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from benchmarks import baselines
from benchmarks.harness import (
    Result,
    Scale,
    Stopwatch,
    copy_backlog,
    fresh_database,
    relay_backlog,
    settings_for,
    template_rows,
    throughput,
    unique,
)
from eventplatform.consumers.worker import ProjectionWorker, WorkerConfig
from eventplatform.messagebus.nats_broker import NatsBroker
from projections import ProductViewProjection


async def _measure(dsn: str, nats_url: str, scale: Scale) -> tuple[Stopwatch, Stopwatch]:
    name = unique("proj")
    settings = settings_for(dsn, nats_url, name)
    copy_backlog(dsn, template_rows(settings), scale.projection)
    ours, raw = Stopwatch(), Stopwatch()
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=1, max_size=2, open=True, kwargs={"autocommit": False}
    )
    async with NatsBroker(settings.nats_servers, name="bench-projection") as broker:
        try:
            head = await relay_backlog(settings, broker)
            worker = ProjectionWorker(
                projection=ProductViewProjection(),
                broker=broker,
                pool=pool,
                config=WorkerConfig(
                    stream=settings.stream,
                    filter_subject=f"{name}.>",
                    batch_size=settings.projection_batch_size,
                ),
            )
            puller = baselines.RawPuller(
                broker.js, settings.stream, f"{name}.>", settings.projection_batch_size
            )
            await worker.start()
            await puller.start()
            for r in range(1, scale.rounds + 1):
                target = head * r // scale.rounds
                before = worker.positions.get(settings.log, 0)
                with ours.timing():
                    while worker.positions.get(settings.log, 0) < target:
                        await worker.process_once()
                done = worker.positions.get(settings.log, 0) - before
                ours.count += done
                with raw.timing():
                    raw.count += await puller.pull(done)
        finally:
            pool.close()
            await broker.js.delete_stream(settings.stream)
    return ours, raw


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Projects a stream backlog; pulls the same messages raw; runs the peer on the store."""
    with fresh_database(server_dsn, "projection") as dsn:
        ours, raw = asyncio.run(_measure(dsn, nats_url, scale))
        peer, peer_events = Stopwatch(), min(scale.runner, scale.projection)
        with psycopg.connect(dsn) as conn:
            baselines.create_peer_table(conn)
        with peer.timing():
            baselines.run_projection_runner(dsn, peer_events)
        peer.count = peer_events
    return [
        throughput(
            "projection",
            "stream backlog",
            ours.rate,
            "jetstream_pull_ack",
            raw.rate,
            at_least=0.6,
        ),
        throughput(
            "projection",
            "stream backlog",
            ours.rate,
            "es_projection_runner",
            peer.rate,
            at_least=3,
        ),
    ]
