"""The command line: every command listed, bad configuration named, dead servers reported."""

import socket

import pytest

from eventplatform.cli.main import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for command in ("schema", "relay", "project", "wait", "status", "demo"):
        assert command in out
    assert "APP_DSN" in out


def test_a_broken_setting_stops_with_status_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    monkeypatch.setenv("APP_POOL_SIZE", "lots")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "APP_POOL_SIZE='lots'" in err


def test_a_missing_dsn_is_named(monkeypatch, capsys):
    monkeypatch.delenv("APP_DSN", raising=False)
    assert main(["status"]) == 2
    assert "APP_DSN is not set" in capsys.readouterr().err


def test_a_projection_reference_that_does_not_load_is_named(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    assert main(["project", "projections:NoSuchProjection"]) == 2
    assert "NoSuchProjection" in capsys.readouterr().err
    assert main(["project", "no_colon"]) == 2
    assert "module:attribute" in capsys.readouterr().err


def test_a_dead_database_is_reported_not_a_traceback(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now: the connection is refused.
    monkeypatch.setenv("APP_DSN", f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=2")
    assert main(["--log-level", "ERROR", "status"]) == 1
    err = capsys.readouterr().err
    assert "StoreUnavailable" in err
    assert str(port) in err


def test_a_handler_reference_must_be_an_idempotent_handler(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    assert main(["handle", "projections:ProductViewProjection"]) == 2
    assert "not an IdempotentEventHandler" in capsys.readouterr().err
