"""Every process connects to NATS with the same credentials and TLS, read once from settings."""

from __future__ import annotations

import ssl

import pytest

from eventplatform.errors import ConfigurationError
from eventplatform.messagebus.nats_broker import NatsBroker, stream_spec
from eventplatform.messagebus.nats_options import NatsConnectOptions, nats_options
from eventplatform.settings import load_settings


def test_without_credentials_or_tls_nothing_is_added_to_the_connect_call():
    assert nats_options(load_settings({})).as_kwargs() == {}


def test_credential_files_are_passed_to_nats_py_by_path(tmp_path):
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----")
    options = nats_options(load_settings({"APP_NATS_CREDS": str(creds)}))
    assert options.as_kwargs() == {"user_credentials": str(creds)}
    seed = tmp_path / "user.nk"
    seed.write_text("SUAM...")
    assert nats_options(load_settings({"APP_NATS_NKEY_SEED": str(seed)})).as_kwargs() == {
        "nkeys_seed": str(seed)
    }


def test_a_ca_file_that_is_not_pem_stops_the_process_at_start_up_naming_it(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="APP_NATS_TLS_CA="):
        nats_options(load_settings({"APP_NATS_TLS_CA": str(bad)}))


def test_a_certificate_and_key_that_are_not_pem_stop_the_process_naming_both(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    settings = load_settings({"APP_NATS_TLS_CERT": str(cert), "APP_NATS_TLS_KEY": str(key)})
    with pytest.raises(ConfigurationError, match=r"APP_NATS_TLS_CERT=.*APP_NATS_TLS_KEY="):
        nats_options(settings)


def test_tls_verifies_the_server_by_default():
    context = NatsConnectOptions(tls=ssl.create_default_context()).tls
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_broker_of_every_process_comes_from_the_same_settings():
    settings = load_settings(
        {"APP_NATS_URL": "nats://bob:BrokerPW1@a:4222,nats://bob:BrokerPW1@b:4222"}
    )
    broker = NatsBroker.from_settings(settings, name="relay-x")
    assert "BrokerPW1" not in broker.servers
    assert broker.servers.count("a:4222") == 1


def test_the_stream_takes_its_retention_from_settings():
    spec = stream_spec(
        load_settings({"APP_STREAM_MAX_AGE": "3600", "APP_STREAM_MAX_BYTES": "1073741824"})
    )
    assert (spec.max_age, spec.max_bytes) == (3600.0, 1 << 30)
    assert stream_spec(load_settings({})).max_age == 7 * 86400
