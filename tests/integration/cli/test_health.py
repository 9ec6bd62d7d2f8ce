"""``eventplatform health``: a probe that says, per dependency, whether it answers right now."""

from __future__ import annotations

import pytest

from eventplatform.cli.main import main
from eventplatform.testing.embedded import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def env(monkeypatch, database_dsn, nats_url, unique_name):
    monkeypatch.setenv("APP_DSN", database_dsn)
    monkeypatch.setenv("APP_NATS_URL", nats_url)
    monkeypatch.setenv("APP_STREAM", unique_name.upper())


@pytest.mark.usefixtures("env")
def test_both_servers_answering_is_healthy(capsys):
    assert main(["health"]) == 0
    assert capsys.readouterr().out.split() == ["postgresql", "ok", "nats", "ok"]


@pytest.mark.usefixtures("env")
def test_a_missing_event_stream_is_unhealthy_when_asked_for(capsys):
    assert main(["health", "--stream"]) == 1
    assert "does not exist (yet): the relay creates it" in capsys.readouterr().out


@pytest.mark.usefixtures("env")
def test_an_unreachable_nats_is_unhealthy_and_its_password_not_shown(monkeypatch, capsys):
    monkeypatch.setenv("APP_NATS_URL", f"nats://bob:HealthPW9@127.0.0.1:{free_port()}")
    assert main(["health", "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "postgresql  ok" in out
    assert "nats        FAIL no NATS server accepts connections" in out
    assert "HealthPW9" not in out


@pytest.mark.usefixtures("env")
def test_an_unreachable_postgresql_is_unhealthy(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", f"postgresql://u:HealthPW8@127.0.0.1:{free_port()}/db")
    assert main(["health", "--no-nats", "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "postgresql  FAIL PostgreSQL unavailable" in out
    assert "HealthPW8" not in out
