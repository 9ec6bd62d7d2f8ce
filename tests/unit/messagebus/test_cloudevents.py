"""The wire format: CloudEvents 1.0 JSON with a deterministic id, decoded strictly."""

import re
import uuid
from typing import Any

import orjson
import pytest

from eventplatform.errors import DecodeError
from eventplatform.messagebus import cloudevents

AGGREGATE = uuid.UUID("5c4a0b5e-6f5b-4f1c-9a51-0c7b2f6d1e11")
STATE = (
    b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-24T10:00:00.000001+00:00"},'
    b'"name":"Mug","price":{"_type_":"decimal_str","_data_":"9.50"}}'
)


def encoded(**overrides):
    kwargs: dict[str, Any] = dict(
        log="products",
        notification_id=7,
        aggregate_id=AGGREGATE,
        version=2,
        topic="Product.Renamed",
        state=STATE,
    )
    kwargs.update(overrides)
    return cloudevents.encode(**kwargs)


def test_an_event_is_a_structured_cloudevent_with_the_stored_state_as_data():
    doc = orjson.loads(encoded())
    assert doc["specversion"] == "1.0"
    assert doc["source"] == "products"
    assert doc["type"] == "Product.Renamed"
    assert doc["subject"] == str(AGGREGATE)
    assert doc["datacontenttype"] == "application/json"
    assert doc["time"] == "2026-11-24T10:00:00.000001+00:00"
    assert doc["sequence"] == 7
    assert doc["aggregateversion"] == 2
    assert doc["data"] == orjson.loads(STATE)


def test_the_id_is_the_same_on_every_republish_and_differs_per_version():
    assert orjson.loads(encoded())["id"] == orjson.loads(encoded(notification_id=99))["id"]
    assert orjson.loads(encoded())["id"] != orjson.loads(encoded(version=3))["id"]
    assert uuid.UUID(orjson.loads(encoded())["id"]).version == 5


def test_the_message_id_names_log_and_position():
    assert cloudevents.message_id("products", 42) == "products:42"


def test_decoding_returns_what_was_encoded():
    event = cloudevents.decode(encoded())
    assert (event.source, event.type, event.subject) == (
        "products",
        "Product.Renamed",
        str(AGGREGATE),
    )
    assert (event.sequence, event.aggregate_version) == (7, 2)
    assert event.data["name"] == "Mug"


def test_state_that_is_not_a_json_object_is_refused_not_published():
    with pytest.raises(DecodeError, match=r"products:7.*not a JSON object"):
        encoded(state=b"\x00\x01encrypted")


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"specversion": "0.3"}', "specversion"),
        (orjson.dumps({**orjson.loads(encoded()), "type": ""}), "'type'"),
        (orjson.dumps({**orjson.loads(encoded()), "sequence": "7"}), "'sequence'"),
        (orjson.dumps({**orjson.loads(encoded()), "aggregateversion": True}), "'aggregateversion'"),
        (orjson.dumps({**orjson.loads(encoded()), "data": [1]}), "'data'"),
    ],
)
def test_a_malformed_message_is_refused_naming_what_is_wrong(body, complaint):
    with pytest.raises(DecodeError, match=complaint):
        cloudevents.decode(body)


def test_the_id_is_the_standard_uuid5_of_aggregate_and_version():
    aggregate = uuid.uuid4()
    expected = uuid.uuid5(cloudevents.EVENT_ID_NAMESPACE, f"{aggregate}:3")
    assert cloudevents.event_id(aggregate, 3) == str(expected)


def with_(**changes):
    """A relay-made message with some attributes replaced, as a stranger could send it."""
    body = orjson.dumps({**orjson.loads(encoded()), **{k: "@" for k in changes}})
    for name, value in changes.items():  # by hand: orjson refuses integers beyond 64 bits
        body = body.replace(f'"{name}":"@"'.encode(), f'"{name}":'.encode() + json(value))
    return body


def json(value: object) -> bytes:
    return str(value).encode() if isinstance(value, int) else orjson.dumps(value)


@pytest.mark.parametrize(
    ("attribute", "value", "complaint"),
    [
        ("id", "0b8a\x00", "'id' must be a lowercase UUID"),
        ("id", "not-a-uuid", "'id' must be a lowercase UUID"),
        ("source", "products\x00", "'source' must be a log name"),
        ("source", "Products", "'source' must be a log name"),
        ("source", "x" * 42, "'source' must be a log name"),
        ("type", "Product.\x00Renamed", "'type' must be printable"),
        ("type", "T" * 256, "'type' is 256 characters long"),
        ("subject", f"{AGGREGATE}\x00", "'subject' must be an aggregate id"),
        ("subject", "A", "'subject' must be an aggregate id"),
        ("sequence", 2**63, "'sequence' must be an integer within 1..2^63-1"),
        ("sequence", 0, "'sequence' must be an integer within 1..2^63-1"),
        ("sequence", 7.0, "'sequence' must be an integer"),
        ("aggregateversion", 2**64, "'aggregateversion' must be an integer within"),
        ("aggregateversion", -(2**63) - 1, "'aggregateversion' must be an integer within"),
        ("time", "yesterday\x00", "'time' must be an RFC 3339 timestamp"),
    ],
)
def test_every_attribute_is_checked_against_what_the_relay_publishes(attribute, value, complaint):
    with pytest.raises(DecodeError, match=re.escape(complaint)):
        cloudevents.decode(with_(**{attribute: value}))


def test_an_error_shows_a_hostile_value_escaped_and_cut_short():
    with pytest.raises(DecodeError) as excinfo:
        cloudevents.decode(with_(subject="\x00" * 10_000))
    message = str(excinfo.value)
    assert "\x00" not in message
    assert "\\x00" in message
    assert len(message) < 300


def test_a_traceparent_that_is_not_w3c_is_dropped_not_fatal():
    valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert cloudevents.decode(with_(traceparent=valid)).traceparent == valid
    assert cloudevents.decode(with_(traceparent="x\x00y")).traceparent is None
