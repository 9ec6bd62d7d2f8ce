"""Settings are parsed once from APP_* variables and fail naming the variable."""

import logging

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
        ("APP_STREAM_REPLICAS", "7"),
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


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("APP_DUPLICATE_WINDOW", "inf", "finite"),
        ("APP_DUPLICATE_WINDOW", "nan", "finite"),
        ("APP_DUPLICATE_WINDOW", "1e12", "less than or equal to 86400"),
        ("APP_ACK_WAIT", "-inf", "finite"),
        ("APP_NATS_URL", "nats://:4222", "names no host"),
        ("APP_NATS_URL", "nats://h:99999", "no valid port"),
        ("APP_NATS_URL", "nats://h:", "no valid port"),
        ("APP_NATS_URL", "nats://a:4222,,nats://b:4222", "empty entry"),
        ("APP_NATS_URL", "ws://a:8080,nats://b:4222", "mixes ws://"),
        ("APP_STREAM_MAX_BYTES", "1000", "at least 1048576"),
        ("APP_STREAM_MAX_AGE", "-1", "greater than or equal to 0"),
        ("APP_NATS_TLS_CA", "/no/such/ca.pem", "not a readable file"),
        ("APP_NATS_CREDS", "/no/such/user.creds", "not a readable file"),
    ],
)
def test_a_value_the_server_would_refuse_fails_at_start_up_in_one_line(variable, value, reason):
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings({variable: value})
    message = str(excinfo.value)
    assert f"{variable}={value!r}" in message
    assert reason in message
    assert "\n" not in message


def test_a_stream_max_age_below_the_duplicate_window_is_refused_naming_both():
    with pytest.raises(ConfigurationError, match=r"APP_STREAM_MAX_AGE=60.*APP_DUPLICATE_WINDOW"):
        load_settings({"APP_STREAM_MAX_AGE": "60", "APP_DUPLICATE_WINDOW": "120"})
    assert load_settings({"APP_STREAM_MAX_AGE": "0"}).stream_max_age == 0


def test_a_client_certificate_needs_its_key_and_one_nats_credential_is_enough(tmp_path):
    pem = tmp_path / "file.pem"
    pem.write_text("x")
    with pytest.raises(ConfigurationError, match="APP_NATS_TLS_CERT and APP_NATS_TLS_KEY"):
        load_settings({"APP_NATS_TLS_CERT": str(pem)})
    with pytest.raises(ConfigurationError, match="APP_NATS_CREDS and APP_NATS_NKEY_SEED"):
        load_settings({"APP_NATS_CREDS": str(pem), "APP_NATS_NKEY_SEED": str(pem)})


def test_a_misspelt_variable_is_warned_about_naming_the_likely_one_but_not_its_value(caplog):
    caplog.set_level(logging.WARNING, logger="eventplatform.settings")
    settings = load_settings({"APP_RELAY_BATCHSIZE": "zero", "APP_LOG": "orders"})
    assert settings.relay_batch_size == 1000
    [record] = caplog.records
    assert "APP_RELAY_BATCHSIZE" in record.getMessage()
    assert "did you mean APP_RELAY_BATCH_SIZE?" in record.getMessage()
    assert "zero" not in record.getMessage()


def test_the_process_environment_is_checked_for_unknown_variables_too(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="eventplatform.settings")
    monkeypatch.setenv("APP_NATS_URLS", "nats://h:4222")
    load_settings()
    assert any("APP_NATS_URLS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("APP_DSN", "postgresql://alice:S3cretPW@db/app?nonsense=1", "S3cretPW"),
        ("APP_DSN", "host=db password=S3cretKV nonsense", "S3cretKV"),
        ("APP_NATS_URL", "nats://bob:NatsPW99@h:99999", "NatsPW99"),
        ("APP_NATS_URL", "http://bob:HttpPW99@h:4222", "HttpPW99"),
    ],
)
def test_a_configuration_error_never_shows_a_password(variable, value, secret):
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings({variable: value})
    assert variable in str(excinfo.value)
    assert secret not in str(excinfo.value)
    assert excinfo.value.__cause__ is None  # pydantic's error repeats the raw input


def test_the_settings_repr_masks_the_credentials():
    settings = load_settings(
        {
            "APP_DSN": "postgresql://alice:ReprPW1@db/app",
            "APP_NATS_URL": "nats://bob:ReprPW2@h:4222",
        }
    )
    assert "ReprPW1" not in repr(settings)
    assert "ReprPW2" not in repr(settings)
    assert "db/app" in repr(settings)


def test_the_log_has_no_default_and_is_demanded_naming_app_log_when_used():
    settings = load_settings({})
    assert settings.log == ""
    with pytest.raises(ConfigurationError, match="APP_LOG is not set"):
        settings.require_log()


def test_eventsourcing_connects_with_the_whole_dsn_and_creates_no_tables():
    dsn = "postgresql://alice:secret@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem"
    env = eventsourcing_env(dsn, pool_size=3)
    assert env["PERSISTENCE_MODULE"] == "eventplatform.store.dsn_factory:DsnPostgresFactory"
    assert env["EVENTPLATFORM_DSN"] == dsn
    assert env["POSTGRES_PASSWORD"] == ""  # the DSN carries it; no second copy
    assert env["POSTGRES_POOL_SIZE"] == "3"
    assert env["CREATE_TABLE"] == "n"


def test_the_factory_points_eventsourcings_pool_at_the_dsn_and_nothing_else():
    from eventsourcing.persistence import InfrastructureFactory

    dsn = "host=db port=6543 dbname=shop user=alice sslmode=require target_session_attrs=any"
    factory = InfrastructureFactory.construct(eventsourcing_env(dsn))
    pool = factory.datastore.pool  # type: ignore[attr-defined]
    assert pool.conninfo == dsn
    assert not {"dbname", "host", "port", "user", "password"} & set(pool.kwargs)


@pytest.mark.parametrize("variable", ["POSTGRES_HOST", "POSTGRES_PASSWORD", "POSTGRES_DBNAME"])
def test_eventsourcing_variables_that_say_where_to_connect_are_refused(variable):
    with pytest.raises(ConfigurationError, match=f"{variable} cannot be set: APP_DSN says"):
        eventsourcing_env("postgresql://u@h/d", extra={variable: "x"})


def test_pooled_connections_are_not_pinged_before_each_use():
    # A pre-ping is a round trip per command; the write path recovers from a broken connection
    # itself (tests/integration/store/test_write_faults.py) and eventsourcing retries its reads.
    assert eventsourcing_env("postgresql://u@h/d")["POSTGRES_PRE_PING"] == "n"


def test_db_functions_that_would_reorder_commits_cannot_be_switched_on():
    with pytest.raises(ConfigurationError, match="POSTGRES_ENABLE_DB_FUNCTIONS"):
        eventsourcing_env("postgresql://u@h/d", extra={"POSTGRES_ENABLE_DB_FUNCTIONS": "yes"})
