"""One redaction rule: no credential from a DSN or a server URL survives into any output."""

from __future__ import annotations

import io
import logging
from urllib.parse import urlparse

import pytest

from eventplatform.redaction import (
    MASK,
    RedactingFormatter,
    RedactingStream,
    redact,
    register_secret,
    secrets_in_url,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://alice:S3cretPW@db:5432/app", f"postgresql://alice:{MASK}@db:5432/app"),
        ("postgres://alice:p%40ss@db/app", f"postgres://alice:{MASK}@db/app"),
        (
            "nats://bob:NatsPW@n1:4222,nats://bob:NatsPW@n2:4222",
            f"nats://bob:{MASK}@n1:4222,nats://bob:{MASK}@n2:4222",
        ),
        ("tls://s3cr3ttoken@nats:4222", f"tls://{MASK}@nats:4222"),
        (
            "host=db user=alice password=S3cretPW dbname=app",
            f"host=db user=alice password={MASK} dbname=app",
        ),
        ("host=db password='with space' dbname=app", f"host=db password={MASK} dbname=app"),
        (
            "postgresql://db/app?user=a&password=S3cretPW&sslmode=require",
            f"postgresql://db/app?user=a&password={MASK}&sslmode=require",
        ),
        ("sslpassword=KeyPass", f"sslpassword={MASK}"),
        (
            "to ParseResult(scheme='nats', netloc='bob:NatsPW@127.0.0.1:4222', path='')",
            f"to ParseResult(scheme='nats', netloc='bob:{MASK}@127.0.0.1:4222', path='')",
        ),
    ],
)
def test_credentials_in_urls_and_dsns_are_masked_wherever_they_stand(text, expected):
    assert redact(text) == expected


def test_a_user_name_without_a_password_is_not_a_secret():
    assert redact("postgresql://alice@db/app") == "postgresql://alice@db/app"


def test_a_registered_secret_is_masked_even_where_no_shape_shows_it():
    register_secret("Unshaped-Secret-42")
    assert redact('FATAL: bad value "Unshaped-Secret-42" here') == f'FATAL: bad value "{MASK}" here'


def test_the_url_encoded_spelling_of_a_registered_secret_is_masked_too():
    register_secret("p%40ssw0rd%21")
    assert "p@ssw0rd!" not in redact("echo p@ssw0rd! and p%40ssw0rd%21")


def test_very_short_secrets_are_masked_only_by_their_shape_so_words_survive():
    register_secret("ab")
    assert redact("absent about") == "absent about"
    assert redact("postgresql://u:ab@h/d") == f"postgresql://u:{MASK}@h/d"


def test_the_secrets_of_a_url_are_its_password_or_its_nats_token():
    assert secrets_in_url("nats://bob:NatsPW@h:4222") == ["NatsPW"]
    assert secrets_in_url("nats://TokenOnly@h:4222") == ["TokenOnly"]
    assert secrets_in_url("postgresql://alice@h/db") == []
    assert secrets_in_url("nats://h:4222") == []


def test_the_formatter_masks_messages_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    log = logging.getLogger("test.redaction.formatter")
    log.addHandler(handler)
    log.propagate = False
    try:
        url = urlparse("nats://bob:FormatterPW@127.0.0.1:4222")
        log.warning("reconnected to %s", url)
        try:
            raise ValueError("postgresql://alice:TracebackPW@db/app")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "FormatterPW" not in out
    assert "TracebackPW" not in out
    assert "Traceback" in out
    assert MASK in out


def test_the_stream_masks_every_write_and_reports_the_length_it_was_given():
    inner = io.StringIO()
    stream = RedactingStream(inner)
    text = "APP_DSN=postgresql://alice:StreamPW@db/app\n"
    assert stream.write(text) == len(text)
    print("nats://bob:PrintedPW@h:1", file=stream)
    assert "StreamPW" not in inner.getvalue()
    assert "PrintedPW" not in inner.getvalue()
