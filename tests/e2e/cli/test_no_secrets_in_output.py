"""No process ever shows a password: every command is run with passwords in APP_DSN and
APP_NATS_URL, at DEBUG level, through a NATS restart and through the failures that used to echo
them (a config error, a wrong NATS password, unreachable servers), and all of its output is
searched for them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventplatform.testing.embedded import EmbeddedNats, free_port
from tests.support.processes import Process

pytestmark = pytest.mark.e2e

PG_SECRET = "PgSecret-e2e-4711"
NATS_SECRET = "NatsSecret-e2e-0815"
SECRETS = (PG_SECRET, NATS_SECRET, quote(PG_SECRET), quote(NATS_SECRET))


@pytest.fixture
def nats_with_password(tmp_path) -> Iterator[EmbeddedNats]:
    config = tmp_path / "nats.conf"
    config.write_text(f'authorization {{ user: bob, password: "{NATS_SECRET}" }}\n')
    with EmbeddedNats(config=config) as server:
        yield server


@pytest.fixture
def env(database_dsn, unique_name, nats_with_password) -> dict[str, str]:
    role = f"alice_{unique_name}"
    params = conninfo_to_dict(database_dsn)
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PG_SECRET)
            )
        )
        conn.execute("CREATE TABLE effects (handler text, event_id text, aggregate text)")
    dsn = f"postgresql://{role}:{PG_SECRET}@{params['host']}:{params['port']}/{params['dbname']}"
    return {
        "APP_DSN": dsn,
        "APP_NATS_URL": f"nats://bob:{NATS_SECRET}@127.0.0.1:{nats_with_password.port}",
        "APP_LOG": "products",
        "APP_STREAM": unique_name.upper(),
        "APP_SUBJECT_PREFIX": unique_name,
        "APP_RELAY_POLL_INTERVAL": "0.2",
    }


def run(args: list[str], env: dict[str, str], *, status: int | None = 0) -> Process:
    process = Process(["--log-level", "DEBUG", *args], env)
    code = process.finish()
    if status is not None:
        assert code == status, process.output
    return process


def test_no_process_shows_a_password_in_any_output(env, nats_with_password):
    done: list[Process] = []
    done.append(run(["schema", "--projection", "projections:ProductViewProjection"], env))
    relay = Process(["--log-level", "DEBUG", "relay"], env)
    worker = Process(["--log-level", "DEBUG", "project", "projections:ProductViewProjection"], env)
    handler = Process(
        ["--log-level", "DEBUG", "handle", "tests.support.consumers:EFFECT_HANDLER"], env
    )
    try:
        relay.wait_for_line("leads log")
        demo = run(["demo"], env)
        assert "demo finished" in demo.output
        done.append(demo)
        done.append(run(["wait", "--projection", "product_view", "--position", "1"], env))
        done.append(run(["status"], env))
        done.append(run(["status", "--json"], env))
        done.append(run(["dlq", "list"], env))
        done.append(run(["rebuild", "projections:ProductViewProjection", "--verify-only"], env))
        done.append(run(["prune", "--older-than", "1d", "--dry-run"], env))
        done.append(run(["health", "--stream"], env))
        done.append(run(["audit"], env))
        nats_with_password.restart()  # nats-py logs the reconnect (it once logged the URL)
        relay.wait_for_line("NATS reconnected to")
    finally:
        for process in (relay, worker, handler):
            process.stop(signal.SIGTERM)
            process.kill()
    done += [relay, worker, handler]

    # The failures that used to echo credentials.
    wrong = {**env, "APP_NATS_URL": env["APP_NATS_URL"].replace(NATS_SECRET, PG_SECRET)}
    refused = Process(["--log-level", "DEBUG", "relay"], wrong)
    refused.wait_for_line("Authorization")
    refused.stop()
    done.append(refused)
    dead_nats = {**env, "APP_NATS_URL": f"nats://bob:{NATS_SECRET}@127.0.0.1:{free_port()}"}
    unreachable = Process(["--log-level", "DEBUG", "relay"], dead_nats)
    unreachable.wait_for_line("cannot reach NATS")
    unreachable.stop()
    done.append(unreachable)
    dead_pg = {**env, "APP_DSN": f"postgresql://alice:{PG_SECRET}@127.0.0.1:{free_port()}/db"}
    done.append(run(["status"], dead_pg, status=1))
    broken = {**env, "APP_POOL_SIZE": "lots", "APP_DUPLICATE_WINDOW": "inf"}
    done.append(run(["status"], broken, status=2))
    bad_dsn = {**env, "APP_DSN": env["APP_DSN"] + "?nonsense=1"}
    config_error = run(["status"], bad_dsn, status=2)
    done.append(config_error)

    assert ":***@" in config_error.output  # the DSN is shown, its password masked
    for process in done:
        for secret in SECRETS:
            assert secret not in process.output, (process.proc.args, process.output)
