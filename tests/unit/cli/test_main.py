"""The command line: every command listed, bad configuration named, dead servers reported."""

import socket
import sys

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


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--log-level", "LOUD", "status"], "--log-level"),
        (["dlq", "list", "--limit", "-1"], "--limit"),
        (["dlq", "list", "--limit", "many"], "--limit"),
        (["schema", "--log", "Junk Table!"], "--log"),
        (["relay", "--log", "x;drop"], "--log"),
        (["status", "--log", "UPPER"], "--log"),
        (["wait", "--projection", "p", "--position", "-3"], "--position"),
        (["wait", "--projection", "p", "--position", "1", "--timeout", "inf"], "--timeout"),
        (["rebuild", "projections:ProductViewProjection", "--log", "9lives"], "--log"),
    ],
)
def test_a_bad_flag_ends_in_one_usage_line_with_status_2(monkeypatch, capsys, argv, named):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err


def test_the_log_flag_is_checked_by_the_same_rule_as_app_log(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    main(["schema", "--log", "Junk"])
    flag_error = capsys.readouterr().err
    monkeypatch.setenv("APP_LOG", "Junk")
    main(["schema"])
    variable_error = capsys.readouterr().err
    rule = "must start with a lowercase letter and hold only a-z, 0-9 and '_' (max 41)"
    assert rule in flag_error
    assert rule in variable_error


def test_the_log_level_takes_any_case(monkeypatch, capsys):
    monkeypatch.delenv("APP_DSN", raising=False)
    assert main(["--log-level", "warning", "status"]) == 2  # parsed; then APP_DSN is missing
    assert "APP_DSN is not set" in capsys.readouterr().err


def test_a_configuration_error_shows_the_dsn_with_its_password_masked(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://alice:CliSecret1@127.0.0.1/db")
    monkeypatch.setenv("APP_POOL_SIZE", "lots")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "APP_POOL_SIZE='lots'" in err
    assert "CliSecret1" not in err


def test_an_unexpected_error_is_reported_with_its_traceback_masked(monkeypatch, capsys):
    def explode(args, settings):
        raise RuntimeError(f"cannot use {settings.dsn}")

    monkeypatch.setenv("APP_DSN", "postgresql://alice:CliSecret2@127.0.0.1/db")
    monkeypatch.setattr(sys.modules["eventplatform.cli.main"], "cmd_status", explode)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "RuntimeError" in err
    assert "CliSecret2" not in err
