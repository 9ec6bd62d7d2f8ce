"""``eventplatform demo``: the whole flow, from command to read model, on real servers.

With ``APP_DSN`` / ``APP_NATS_URL`` unset it starts throwaway local servers and removes them
afterwards; with them set it uses those servers (and leaves them running).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from typing import Any

from psycopg_pool import ConnectionPool

from eventplatform.cli.loader import load, load_projection
from eventplatform.consumers.runner import run_projection
from eventplatform.errors import CommandRejected, ConfigurationError
from eventplatform.redaction import redact
from eventplatform.relay.relay import RelayedBatch
from eventplatform.relay.runner import run_relay
from eventplatform.settings import Settings
from eventplatform.store.application import CommandResult, EventSourcedApplication
from eventplatform.store.schema import create_schema
from eventplatform.store.waiting import wait_for


@contextmanager
def _servers(settings: Settings) -> Iterator[tuple[Settings, list[str]]]:
    notes: list[str] = []
    overrides: dict[str, Any] = {}
    with ExitStack() as stack:
        if not settings.dsn:
            from eventplatform.testing.embedded import EmbeddedPostgres

            pg = stack.enter_context(EmbeddedPostgres())
            overrides["dsn"] = pg.dsn
            notes.append(f"PostgreSQL  embedded, throwaway  {pg.dsn}")
        else:
            notes.append("PostgreSQL  APP_DSN")
        if not os.environ.get("APP_NATS_URL"):
            from eventplatform.testing.embedded import EmbeddedNats

            nats_server = stack.enter_context(EmbeddedNats())
            overrides["nats_url"] = nats_server.url
            notes.append(f"NATS        embedded, throwaway  {nats_server.url} (JetStream)")
        else:
            notes.append(f"NATS        APP_NATS_URL  {redact(settings.nats_url)}")
        yield settings.model_copy(update=overrides), notes


#: The sample, loaded from the working directory like an app server loads apps.
SAMPLE_APPLICATION = "domain:Products"
SAMPLE_PROJECTION = "projections:ProductViewProjection"


def run_demo(settings: Settings) -> int:
    """Runs the demo with the sample ``Product`` domain; returns the exit status.

    Args:
        settings: platform settings (servers come from here when configured).
    """
    application = SAMPLE_APPLICATION
    app_class = load(application, what="application")
    if not (isinstance(app_class, type) and issubclass(app_class, EventSourcedApplication)):
        msg = f"{application!r} is not an EventSourcedApplication subclass"
        raise ConfigurationError(msg)
    view = load_projection(SAMPLE_PROJECTION)
    started = time.monotonic()
    print("eventplatform demo: command -> event store (outbox) -> relay -> JetStream -> projection")
    with _servers(settings) as (settings, notes):
        settings = settings.model_copy(update={"log": app_class.name})
        for note in notes:
            print(f"  {note}")
        create_schema(settings.require_dsn(), logs=[settings.log], projections=[view])
        print(f"  schema      {settings.log}_events, {view.table}, platform tables\n")
        asyncio.run(_flow(settings, app_class, view))
    embedded = "; throwaway servers removed" if any("embedded" in n for n in notes) else ""
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s{embedded}")
    return 0


async def _flow(settings: Settings, app_class: Any, view: Any) -> None:
    published: dict[int, tuple[str, str]] = {}

    def on_relay(batch: RelayedBatch) -> None:
        for m in batch.messages:
            published[int(m.msg_id.rpartition(":")[2])] = (m.subject, m.msg_id)

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_relay(settings, stop, on_batch=on_relay)),
        asyncio.create_task(run_projection(settings, view, stop)),
    ]
    app = app_class(settings)
    pool: ConnectionPool[Any] = ConnectionPool(settings.require_dsn(), min_size=1, max_size=2)
    try:
        from domain import ChangePrice, CreateProduct, DiscontinueProduct, RenameProduct
        from projections import ProductViews

        views = ProductViews(pool, table=view.table)

        async def step(title: str, command: Callable[[], CommandResult]) -> CommandResult:
            print(f"> {title}")
            t0 = time.monotonic()
            result = await asyncio.to_thread(command)
            for n in app.recorder.select_notifications(result.position, 1):
                print(f"  stored     {settings.log}:{n.id}  {n.topic}  v{n.originator_version}")
            await asyncio.to_thread(
                wait_for,
                settings.require_dsn(),
                projection=view.name,
                log=settings.log,
                position=result.position,
                timeout=15,
            )
            elapsed = (time.monotonic() - t0) * 1000
            subject, msg_id = published.get(result.position, ("?", "?"))
            print(f"  published  {subject}  Nats-Msg-Id={msg_id}")
            row = views.get(result.aggregate_id)
            shown = (
                f"{row.name!r} {row.price} discontinued={row.discontinued} v{row.version}"
                if row
                else "-"
            )
            print(f"  projected  {view.table}: {shown}  ({elapsed:.1f} ms command to read model)")
            return result

        mug = await step(
            "CreateProduct(name='Coffee mug', sku='MUG-001', price=9.50)",
            lambda: app.create(
                CreateProduct(name="Coffee mug", sku="MUG-001", price=Decimal("9.50"))
            ),
        )
        await step(
            "CreateProduct(name='Teapot', sku='TEA-042', price=24.00)",
            lambda: app.create(CreateProduct(name="Teapot", sku="TEA-042", price=Decimal("24.00"))),
        )
        await step(
            "RenameProduct(mug, 'Large coffee mug')",
            lambda: app.rename(RenameProduct(product_id=mug.aggregate_id, name="Large coffee mug")),
        )
        await step(
            "ChangePrice(mug, 11.00)",
            lambda: app.change_price(
                ChangePrice(product_id=mug.aggregate_id, price=Decimal("11.00"))
            ),
        )
        await step(
            "DiscontinueProduct(mug)",
            lambda: app.discontinue(DiscontinueProduct(product_id=mug.aggregate_id)),
        )
        print("> ChangePrice(mug, 12.00) after it was discontinued")
        try:
            await asyncio.to_thread(
                app.change_price, ChangePrice(product_id=mug.aggregate_id, price=Decimal("12.00"))
            )
        except CommandRejected as e:
            print(f"  refused    {type(e).__name__}: {e} (nothing written)")
        print("\nread model (product_view, all rows):")
        for row in views.list(include_discontinued=True):
            print(f"  {row.sku:<8} {row.name:<18} {row.price:>7}  discontinued={row.discontinued}")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        pool.close()
        app.close()
