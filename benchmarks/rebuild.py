"""``rebuild``: replaying the notification log into a fresh read model.

Ours is :func:`eventplatform.replay.replay_log`, the replay a rebuild is made of (pages of
stored events, ``Projection.apply_batch`` in pipeline mode, one transaction per page that also
records the position), into a fresh table. The blue/green steps around it (handover, verify,
swap) cost a few statements, not a per-event price, and are not timed. The peer is
eventsourcing's ``ProjectionRunner`` replaying the same log from the start, one transaction
per event.
"""

from __future__ import annotations

import psycopg

from benchmarks import baselines
from benchmarks.harness import (
    LOG,
    Result,
    Scale,
    Stopwatch,
    copy_backlog,
    fresh_database,
    settings_for,
    template_rows,
    throughput,
)
from eventplatform.rebuild.replay import replay_log
from projections import ProductViewProjection


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Replays a log into a fresh table; the peer replays the same log."""
    with fresh_database(server_dsn, "rebuild") as dsn:
        settings = settings_for(dsn, nats_url, "rebuild")
        copy_backlog(dsn, template_rows(settings), scale.rebuild)
        fresh = ProductViewProjection(table="product_view_rebuilt")
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            fresh.create_tables(cur)
        ours = Stopwatch()
        with ours.timing():
            _, ours.count = replay_log(dsn, fresh, log=LOG)
        with psycopg.connect(dsn) as conn:
            baselines.create_peer_table(conn)
        peer, peer_events = Stopwatch(), min(scale.runner, scale.rebuild)
        with peer.timing():
            baselines.run_projection_runner(dsn, peer_events)
        peer.count = peer_events
    return [
        throughput(
            "rebuild",
            "replay_log into fresh table",
            ours.rate,
            "es_projection_runner_replay",
            peer.rate,
            at_least=5,
        )
    ]
