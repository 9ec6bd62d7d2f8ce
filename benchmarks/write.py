"""``write``: saving aggregates through the platform beside a raw insert of the same rows.

Ours goes through ``Products`` (pydantic command, aggregate, eventsourcing's mapper, the
group-commit write: table lock, NOTIFY, insert, commit in one round trip), from one thread.
The limit inserts the very rows ours stored into a table of the same shape, one committed
INSERT per row or ``executemany`` of 100 per transaction. ``write-concurrency`` has the
same single-event commands from several threads.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg

from benchmarks import baselines
from benchmarks.harness import (
    LOG,
    Result,
    Scale,
    Stopwatch,
    fresh_database,
    settings_for,
    stored_rows,
    throughput,
)
from domain import CreateProduct, Product, Products
from eventplatform.store.schema import events_table

BATCH = 100


def run(server_dsn: str, nats_url: str, scale: Scale) -> list[Result]:
    """Measures single-event commands and 100-aggregate saves against raw inserts."""
    with fresh_database(server_dsn, "write") as dsn:
        app = Products(settings_for(dsn, nats_url, "write"))
        ours_single, raw_single = Stopwatch(), Stopwatch()
        ours_batch, raw_batch = Stopwatch(), Stopwatch()
        position = 0
        try:
            with psycopg.connect(dsn) as conn:
                baselines.create_raw_table(conn, events_table(LOG))
                for r in range(scale.rounds):
                    n = scale.write_single // scale.rounds
                    with ours_single.timing():
                        for i in range(n):
                            command = CreateProduct(
                                name=f"p{r}-{i}", sku=f"S{r}-{i}", price=Decimal("9.99")
                            )
                            position = app.create(command).position
                    rows = stored_rows(conn, position - n)
                    with raw_single.timing():
                        baselines.raw_insert(conn, rows, 1)
                    ours_single.count += n
                    raw_single.count += len(rows)

                    n = scale.write_batched // scale.rounds // BATCH * BATCH
                    with ours_batch.timing():
                        for start in range(0, n, BATCH):
                            products = [
                                Product.create(
                                    f"b{r}-{start + i}", f"B{r}-{start + i}", Decimal("1.50")
                                )
                                for i in range(BATCH)
                            ]
                            recordings = app.save(*products)
                    position = max(rec.notification.id for rec in recordings)
                    rows = stored_rows(conn, position - n)
                    with raw_batch.timing():
                        baselines.raw_insert(conn, rows, BATCH)
                    ours_batch.count += n
                    raw_batch.count += len(rows)
        finally:
            app.close()
    return [
        throughput(
            "write",
            "1 event/command",
            ours_single.rate,
            "psycopg_insert_1row",
            raw_single.rate,
            at_least=0.7,
        ),
        throughput(
            "write",
            "100 events/save",
            ours_batch.rate,
            "psycopg_executemany_100",
            raw_batch.rate,
            at_least=0.7,
        ),
    ]
