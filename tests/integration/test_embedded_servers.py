"""Throwaway servers: real, isolated, restartable, and never chosen over configured ones."""

from __future__ import annotations

import nats
import psycopg
import pytest

from eventplatform.testing import DSN_VARIABLE, resolve_source

pytestmark = pytest.mark.integration


def test_configured_servers_win_over_throwaway_ones():
    assert resolve_source({DSN_VARIABLE: "postgresql://db/x"}, DSN_VARIABLE) == "external"
    assert resolve_source({DSN_VARIABLE: "  "}, DSN_VARIABLE) == "embedded"
    assert resolve_source({}, DSN_VARIABLE) == "embedded"


def test_each_test_gets_its_own_empty_database(database_dsn, postgres_dsn):
    assert database_dsn != postgres_dsn
    with psycopg.connect(database_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_a_private_postgres_keeps_its_data_across_a_restart(embedded_postgres):
    with psycopg.connect(embedded_postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    embedded_postgres.restart()
    with psycopg.connect(embedded_postgres.dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_a_killed_postgres_refuses_connections_until_restarted(embedded_postgres):
    embedded_postgres.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(embedded_postgres.dsn, connect_timeout=2)
    embedded_postgres.start()
    with psycopg.connect(embedded_postgres.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.asyncio
async def test_a_private_nats_has_jetstream_and_keeps_messages_across_a_restart(embedded_nats):
    nc = await nats.connect(embedded_nats.url)
    js = nc.jetstream()
    await js.add_stream(name="KEPT", subjects=["kept.>"])
    ack = await js.publish("kept.one", b"hello")
    assert ack.seq == 1
    await nc.close()
    embedded_nats.restart()
    nc = await nats.connect(embedded_nats.url)
    try:
        msg = await nc.jetstream().get_msg("KEPT", 1)
        assert msg.data == b"hello"
    finally:
        await nc.close()
