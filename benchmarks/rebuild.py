"""``rebuild``: replaying the notification log into a fresh read model.

``eventplatform/rebuild.py`` did not exist when this was written, so ours is the replay such a
rebuild does: read the store in pages (server-side cursor), map rows to domain events with the
application's mapper, and apply each page with ``Projection.apply_batch`` in pipeline mode in
ONE transaction that also records the tracking position. The peer is eventsourcing's
``ProjectionRunner`` replaying the same log from the start, one transaction per event.
"""

from __future__ import annotations

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

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
from domain import Products
from eventplatform.schema import events_table
from eventplatform.tracking import PostgresTracking
from projections import ProductViewProjection

PAGE = 5_000


def replay(dsn: str, app: Products, projection: ProductViewProjection) -> int:
    """Replays the whole log into ``projection``'s table; returns the events applied."""
    tracking = PostgresTracking()
    applied = 0
    select = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
        " ORDER BY notification_id"
    ).format(sql.Identifier(events_table(LOG)))
    with psycopg.connect(dsn) as read_conn, psycopg.connect(dsn) as write_conn:
        with write_conn.cursor() as cur:
            projection.create_tables(cur)
        write_conn.commit()
        with read_conn.cursor(name="replay") as source:
            source.itersize = PAGE
            source.execute(select)
            while rows := source.fetchmany(PAGE):
                events = [
                    app.mapper.to_domain_event(StoredEvent(r[1], r[2], r[3], bytes(r[4])))
                    for r in rows
                ]
                with write_conn.transaction(), write_conn.cursor() as cur:
                    with write_conn.pipeline():
                        projection.apply_batch(cur, events)
                    tracking.record(cur, f"{projection.name}_rebuild", LOG, rows[-1][0])
                applied += len(rows)
    return applied


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Replays a log into a fresh table; the peer replays the same log."""
    with fresh_database(server_dsn, "rebuild") as dsn:
        settings = settings_for(dsn, nats_url, "rebuild")
        copy_backlog(dsn, template_rows(settings), scale.rebuild)
        app = Products(settings)
        ours = Stopwatch()
        try:
            with ours.timing():
                ours.count = replay(dsn, app, ProductViewProjection(table="product_view_rebuilt"))
        finally:
            app.close()
        with psycopg.connect(dsn) as conn:
            baselines.create_peer_table(conn)
        peer, peer_events = Stopwatch(), min(scale.runner, scale.rebuild)
        with peer.timing():
            baselines.run_projection_runner(dsn, peer_events)
        peer.count = peer_events
    return [
        throughput(
            "rebuild",
            "replay into fresh table",
            ours.rate,
            "es_projection_runner_replay",
            peer.rate,
            at_least=5,
        )
    ]
