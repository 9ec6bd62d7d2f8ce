"""Settings are parsed once from APP_* variables and fail naming the variable."""

import pytest

from eventplatform.errors import ConfigurationError
from eventplatform.settings import load_settings
from eventplatform.store.postgres import eventsourcing_env


def test_the_seeds_variable_names_configure_the_servers():
    settings = load_settings(
        {"APP_DSN": "postgresql://u@db:5433/app", "APP_NATS_URL": "nats://a:4222,nats://b:4222"}
    )
    assert settings.dsn == "postgresql://u@db:5433/app"
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]


def test_defaults_need_no_environment_but_the_dsn_is_demanded_when_used():
    settings = load_settings({})
    assert settings.stream == "EVENTS"
    assert settings.subject_prefix == "events"
    with pytest.raises(ConfigurationError, match="APP_DSN"):
        settings.require_dsn()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APP_RELAY_BATCH_SIZE", "zero"),
        ("APP_RELAY_BATCH_SIZE", "0"),
        ("APP_ACK_WAIT", "-1"),
        ("APP_SUBJECT_PREFIX", "events.>"),
        ("APP_STREAM", "has.dots"),
        ("APP_NATS_URL", "http://localhost:4222"),
        ("APP_LOG", "Products!"),
        ("APP_DSN", "host=db port=5432 nonsense"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(variable, value):
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings({variable: value})
    assert variable in str(excinfo.value)
    assert repr(value) in str(excinfo.value)


def test_settings_are_frozen():
    settings = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        settings.stream = "OTHER"


def test_unrelated_variables_are_ignored():
    assert load_settings({"APP_UNKNOWN": "x", "PATH": "/bin", "APP_LOG": "orders"}).log == "orders"


def test_the_log_has_no_default_and_is_demanded_naming_app_log_when_used():
    settings = load_settings({})
    assert settings.log == ""
    with pytest.raises(ConfigurationError, match="APP_LOG is not set"):
        settings.require_log()


def test_the_dsn_becomes_eventsourcings_variables_with_table_creation_off():
    env = eventsourcing_env("postgresql://alice:secret@db.example:6543/shop", pool_size=3)
    assert env["POSTGRES_HOST"] == "db.example"
    assert env["POSTGRES_PORT"] == "6543"
    assert env["POSTGRES_DBNAME"] == "shop"
    assert env["POSTGRES_USER"] == "alice"
    assert env["POSTGRES_PASSWORD"] == "secret"
    assert env["POSTGRES_POOL_SIZE"] == "3"
    assert env["CREATE_TABLE"] == "n"


def test_pooled_connections_are_not_pinged_before_each_use():
    # A pre-ping is a round trip per command; the write path recovers from a broken connection
    # itself (tests/integration/store/test_write_faults.py) and eventsourcing retries its reads.
    assert eventsourcing_env("postgresql://u@h/d")["POSTGRES_PRE_PING"] == "n"


def test_db_functions_that_would_reorder_commits_cannot_be_switched_on():
    with pytest.raises(ConfigurationError, match="POSTGRES_ENABLE_DB_FUNCTIONS"):
        eventsourcing_env("postgresql://u@h/d", extra={"POSTGRES_ENABLE_DB_FUNCTIONS": "yes"})
