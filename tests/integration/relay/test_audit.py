"""``eventplatform audit``: the stream compared with the store, and a repair that keeps order."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from eventplatform.cli.main import main
from eventplatform.cli.status import read_status
from eventplatform.leases.leadership import LeaseConfig
from eventplatform.relay.audit import audit_stream
from eventplatform.relay.event_log import PostgresEventLog
from eventplatform.relay.runner import run_relay
from eventplatform.settings import Settings
from eventplatform.store.schema import create_schema
from projections import ProductViewProjection
from tests.integration.relay.conftest import WINDOW
from tests.support.relay import (
    RelayParts,
    another_databases_body,
    create_products,
    publish_as,
    relays_body,
    stored_event,
    stream_content,
    until_position,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def audit(settings: Settings, parts: RelayParts):
    log = PostgresEventLog(parts.reader, parts.reader, "products")
    return await audit_stream(
        parts.broker.nc, parts.broker.js, settings.stream, [log], parts.positions
    )


def cli_audit(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    for name, value in {
        "APP_DSN": settings.dsn,
        "APP_NATS_URL": settings.nats_url,
        "APP_LOG": "products",
        "APP_STREAM": settings.stream,
        "APP_SUBJECT_PREFIX": settings.subject_prefix,
        "APP_RELAY_LEASE_TTL": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return main(["--log-level", "WARNING", "audit", *args])


async def seq_of(settings: Settings, notification: int) -> int:
    content = await stream_content(settings.nats_url, settings.stream)
    [seq] = [m.seq for m in content if m.msg_id == f"products:{notification}"]
    return seq


async def test_a_stream_holding_the_log_exactly_passes(settings, parts, monkeypatch, capsys):
    ids = create_products(settings, 5)
    await parts.relay().relay_once()

    result = await audit(settings, parts)

    [log] = result.logs
    assert (log.ok, log.in_stream, log.relay_position) == (True, 5, ids[-1])
    assert await asyncio.to_thread(cli_audit, settings, monkeypatch) == 0
    assert "result: ok" in capsys.readouterr().out


async def test_missing_extra_duplicated_and_out_of_order_events_are_each_reported(
    settings, parts, monkeypatch, capsys
):
    ids = create_products(settings, 8)
    await parts.relay().relay_once()
    js = parts.broker.js
    # Events 2 and 3 are lost; 3 comes back later, after 8 (without the repair's mark).
    for n in ids[1:3]:
        await js.delete_msg(settings.stream, await seq_of(settings, n))
    await asyncio.sleep(WINDOW + 0.2)  # JetStream no longer drops a repeated id
    body = relays_body(stored_event(settings.dsn, ids[2]))
    late = await publish_as(js, parts.subject, body, f"products:{ids[2]}")
    # Event 4 twice; a forgery; another database's message.
    body = relays_body(stored_event(settings.dsn, ids[3]))
    twice = await publish_as(js, parts.subject, body, f"products:{ids[3]}")
    forged = await publish_as(js, parts.subject, b"{}", "products:99")
    foreign = await publish_as(js, parts.subject, another_databases_body(ids[4]), "products:5")
    await publish_as(js, parts.subject, b"{}", "orders:1")  # another log's: none of ours

    [log] = (await audit(settings, parts)).logs

    assert log.missing == [ids[1]]
    assert [(e.seq, e.claimed, e.verdict) for e in log.extra.listed] == [
        (forged, 99, "forged"),
        (foreign, 5, "foreign"),
    ]
    assert [(p.notification, p.seq) for p in log.duplicated.listed] == [(ids[3], twice)]
    assert [(p.notification, p.seq) for p in log.out_of_order.listed] == [(ids[2], late)]
    assert log.problems == 5

    assert await asyncio.to_thread(cli_audit, settings, monkeypatch, "--json") == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] is False
    assert shown["other"] == 1
    [shown_log] = shown["logs"]
    assert shown_log["missing"] == {"count": 1, "listed": [ids[1]]}
    assert (shown_log["extra"]["count"], shown_log["duplicated"]["count"]) == (2, 1)
    assert shown_log["out_of_order"]["listed"] == [{"notification": ids[2], "seq": late}]

    assert await asyncio.to_thread(cli_audit, settings, monkeypatch) == 1
    text = capsys.readouterr().out
    assert f"seq {forged} claims products:99: the log has no such notification (forged)" in text
    assert "eventplatform audit --log products --repair" in text
    assert "result: PROBLEMS FOUND" in text


async def test_repair_republishes_lost_events_under_the_relays_lease_and_names_the_rebuilds(
    settings, monkeypatch, capsys
):
    create_schema(settings.dsn, logs=["products"], projections=[ProductViewProjection()])
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stop, lease=LeaseConfig(ttl=1.0)))
    try:
        ids = create_products(settings, 5)
        await until_position(settings.dsn, ids[-1])
        # Acknowledged messages are gone (an OS crash before JetStream's fsync loses the tail;
        # a deleted one leaves a hole): event 3 and event 5, the last.
        lost = [ids[2], ids[4]]
        parts_seqs = [await seq_of(settings, n) for n in lost]
        nc_js = await _jetstream(settings)
        for seq in parts_seqs:
            await nc_js[1].delete_msg(settings.stream, seq)
        await nc_js[0].close()
        # The projection had applied them before.
        with psycopg.connect(settings.dsn) as conn:
            conn.execute(
                "INSERT INTO eventplatform_tracking (projection, log, position)"
                " VALUES ('product_view', 'products', %s)",
                (ids[-1],),
            )

        code = await asyncio.to_thread(
            cli_audit,
            settings,
            monkeypatch,
            "--repair",
            "--projection",
            "projections:ProductViewProjection",
        )

        assert code == 0
        text = capsys.readouterr().out
        assert "repair of products: republished 2 event(s)" in text
        for n in lost:
            aggregate = stored_event(settings.dsn, n).originator_id
            assert (
                "eventplatform rebuild projections:ProductViewProjection --log products"
                f" --aggregate {aggregate}"
            ) in text
        # The relay took its lease back and goes on after its position.
        more = create_products(settings, 2, "B")
        await until_position(settings.dsn, more[-1])
        assert read_status(settings.dsn, ["products"]).logs[0].leader is not None
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=10)
    content = await stream_content(settings.nats_url, settings.stream)
    claimed = [m.msg_id for m in content]
    assert claimed == [f"products:{n}" for n in [ids[0], ids[1], ids[3], *lost, *more]]
    assert [m.headers.get("Eventplatform-Republished") for m in content[3:5]] == [
        "audit --repair"
    ] * 2
    # Event 3 came after 4 on purpose: the next audit is clean and says so.
    assert await asyncio.to_thread(cli_audit, settings, monkeypatch, "--json") == 0
    [log] = json.loads(capsys.readouterr().out)["logs"]
    assert log["republished"] == {"count": 1, "listed": [{"notification": ids[2], "seq": 6}]}


async def test_delete_extra_removes_forged_messages_the_relay_warned_about(
    settings, parts, monkeypatch, capsys
):
    ids = create_products(settings, 2)
    await parts.relay().relay_once()
    seq = await publish_as(parts.broker.js, parts.subject, b"{}", f"products:{ids[-1] + 10}")

    assert await asyncio.to_thread(cli_audit, settings, monkeypatch, "--delete-extra") == 0
    assert "deleted 1 extra message(s)" in capsys.readouterr().out
    content = await stream_content(settings.nats_url, settings.stream)
    assert seq not in [m.seq for m in content]
    assert (await audit(settings, parts)).ok


async def _jetstream(settings: Settings):
    import nats

    nc = await nats.connect(settings.nats_url)
    return nc, nc.jetstream()
