"""Every worker honours SIGTERM and SIGINT within a second or two, in every state.

Real processes: NATS unreachable, NATS refusing a wrong password, PostgreSQL unreachable, and
running normally. Before, ``project`` started with NATS down and the relay after one
``Authorization Violation`` ignored both signals for over 20 seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from eventplatform.store.schema import create_schema
from eventplatform.testing.embedded import EmbeddedNats, free_port
from tests.support.processes import Process

pytestmark = pytest.mark.e2e

#: "Within a second or two", plus the interpreter's own exit.
BOUND = 3.0


@pytest.fixture(scope="module")
def password_nats(tmp_path_factory) -> Iterator[EmbeddedNats]:
    config = tmp_path_factory.mktemp("nats-password") / "nats.conf"
    config.write_text('authorization { user: relay, password: "Right-PW-5150" }\n')
    with EmbeddedNats(config=config) as server:
        yield server


@pytest.fixture
def env(database_dsn, nats_url, unique_name) -> dict[str, str]:
    create_schema(database_dsn, logs=["products"])
    return {
        "APP_DSN": database_dsn,
        "APP_NATS_URL": nats_url,
        "APP_LOG": "products",
        "APP_STREAM": unique_name.upper(),
        "APP_SUBJECT_PREFIX": unique_name,
    }


def stopped_in_time(process: Process, sig: int) -> None:
    try:
        took = process.stop(sig)
    finally:
        process.kill()
    assert took < BOUND, f"took {took:.1f}s; output:\n{process.output}"
    assert "Traceback" not in process.output, process.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_relay_waiting_for_an_unreachable_nats_stops_at_once(env, sig):
    relay = Process(["relay"], {**env, "APP_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    relay.wait_for_line("cannot reach NATS")
    stopped_in_time(relay, sig)
    assert relay.proc.returncode == 0


def test_a_relay_refused_for_a_wrong_password_stops_at_once(env, password_nats):
    url = f"nats://relay:Wrong-PW-1@127.0.0.1:{password_nats.port}"
    relay = Process(["relay"], {**env, "APP_NATS_URL": url})
    relay.wait_for_line("cannot reach NATS", "Authorization")
    stopped_in_time(relay, signal.SIGTERM)
    assert "Wrong-PW-1" not in relay.output
    assert relay.proc.returncode == 0


def test_a_relay_that_cannot_reach_postgresql_stops_at_once(env):
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    relay = Process(["relay"], {**env, "APP_DSN": dsn})
    relay.wait_for_line("relay lost PostgreSQL")
    stopped_in_time(relay, signal.SIGTERM)
    assert relay.proc.returncode == 0


def test_a_leading_relay_stops_at_once(env):
    relay = Process(["relay"], env)
    relay.wait_for_line("leads log")
    stopped_in_time(relay, signal.SIGTERM)
    assert relay.proc.returncode == 0


def test_a_projection_worker_waiting_for_an_unreachable_nats_stops_at_once(env):
    worker = Process(
        ["project", "projections:ProductViewProjection"],
        {**env, "APP_NATS_URL": f"nats://127.0.0.1:{free_port()}"},
    )
    worker.wait_for_line("NATS")
    stopped_in_time(worker, signal.SIGTERM)


def test_a_projection_worker_refused_for_a_wrong_password_stops_at_once(env, password_nats):
    url = f"nats://relay:Wrong-PW-2@127.0.0.1:{password_nats.port}"
    worker = Process(["project", "projections:ProductViewProjection"], {**env, "APP_NATS_URL": url})
    worker.wait_for_line("Authorization")
    stopped_in_time(worker, signal.SIGTERM)
    assert "Wrong-PW-2" not in worker.output
