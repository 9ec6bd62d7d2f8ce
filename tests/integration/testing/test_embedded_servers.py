"""Throwaway servers: real, isolated, restartable, and never chosen over configured ones."""

from __future__ import annotations

import socket

import nats
import psycopg
import pytest

from eventplatform.testing import embedded
from eventplatform.testing.embedded import EmbeddedNats, EmbeddedPostgres
from eventplatform.testing.plugin import DSN_VARIABLE, NATS_VARIABLE, resolve_source

pytest_plugins = ["pytester"]  # runs the plugin in an inner pytest session

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
        name = conn.execute("SELECT current_database()").fetchone()
    assert tables == (0,)
    assert name is not None
    assert name[0].startswith("ep_t")


def test_a_throwaway_postgres_answers_over_tcp_and_leaves_nothing_behind():
    with EmbeddedPostgres() as pg:
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        server = pg._proc
    assert server is not None
    assert server.returncode is not None  # stopped and waited for
    assert not pg.workdir.exists()


def test_a_throwaway_nats_is_gone_with_its_store_after_the_block():
    with EmbeddedNats() as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        process = server._proc
    assert process is not None
    assert process.returncode is not None
    assert not server.workdir.exists()


def test_a_lost_race_for_a_free_port_moves_to_another_port(monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = embedded.free_port
        monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real_free_port())
        with EmbeddedNats() as server:
            assert server.port != taken
            assert server.running


def test_a_requested_port_that_is_taken_fails_clearly():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with (
            pytest.raises(embedded.EmbeddedServerError, match="did not start"),
            EmbeddedNats(port=taken),
        ):
            pass


def test_configured_servers_are_used_and_none_is_started(pytester, monkeypatch, postgres_dsn):
    monkeypatch.setenv(DSN_VARIABLE, postgres_dsn)
    monkeypatch.setenv(NATS_VARIABLE, "nats://127.0.0.1:1")  # never connected to here
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        f"""
        def test_external(postgres_dsn, nats_url):
            assert postgres_dsn == {postgres_dsn!r}
            assert nats_url == "nats://127.0.0.1:1"
        """
    )
    result = pytester.runpytest_inprocess("-p", "eventplatform.testing.plugin")
    result.assert_outcomes(passed=1)


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


@pytest.mark.asyncio
async def test_a_killed_nats_comes_back_on_its_port_with_its_stream(embedded_nats):
    nc = await nats.connect(embedded_nats.url)
    js = nc.jetstream()
    await js.add_stream(name="CRASH", subjects=["crash.>"])
    await js.publish("crash.one", b"before")
    await nc.close()
    port = embedded_nats.port
    embedded_nats.kill()
    assert not embedded_nats.running
    embedded_nats.start()
    assert embedded_nats.port == port
    nc = await nats.connect(embedded_nats.url)
    try:
        ack = await nc.jetstream().publish("crash.two", b"after")
        assert ack.seq == 2
    finally:
        await nc.close()
