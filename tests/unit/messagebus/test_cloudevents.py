"""The wire format: CloudEvents 1.0 JSON, a deterministic id, plain data, decoded strictly."""

import re
import uuid
from typing import Any

import orjson
import pytest

from eventplatform.errors import DecodeError
from eventplatform.messagebus import cloudevents

AGGREGATE = uuid.UUID("5c4a0b5e-6f5b-4f1c-9a51-0c7b2f6d1e11")
STATE = b'{"timestamp":"2026-11-24T10:00:00.000001Z","name":"Mug","price":"9.50"}'
#: The same event as eventsourcing's tagged transcoder stored it before the plain layout.
TAGGED = (
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


def test_an_event_is_a_structured_cloudevent_with_its_fields_as_plain_json_data():
    doc = orjson.loads(encoded())
    assert doc["specversion"] == "1.0"
    assert doc["source"] == "products"
    assert doc["type"] == "Product.Renamed"
    assert doc["subject"] == str(AGGREGATE)
    assert doc["datacontenttype"] == "application/json"
    assert doc["dataschema"] == "urn:eventplatform:schema:Product.Renamed:v1"
    assert doc["time"] == "2026-11-24T10:00:00.000001Z"
    assert doc["aggregateversion"] == 2
    assert doc["data"] == {"name": "Mug", "price": "9.50"}


def test_the_time_is_on_the_envelope_once_not_repeated_in_data():
    doc = orjson.loads(encoded())
    assert "timestamp" not in doc["data"]
    assert doc["time"] == "2026-11-24T10:00:00.000001Z"


def test_data_is_the_stored_bytes_spliced_in_not_re_encoded():
    assert encoded().endswith(b'"data":{"name":"Mug","price":"9.50"}}')


def test_sequence_is_the_sequence_extensions_string_zero_padded_to_order_lexicographically():
    ten, nine, huge = (
        orjson.loads(encoded(notification_id=n))["sequence"] for n in (10, 9, 2**63 - 1)
    )
    assert (nine, ten) == ("0000000000000000009", "0000000000000000010")
    assert nine < ten < huge == str(2**63 - 1)


def test_the_dataschema_names_the_class_version_the_event_was_stored_as():
    state = b'{"timestamp":"2026-11-24T10:00:00Z","class_version":3,"name":"Mug"}'
    doc = orjson.loads(encoded(state=state))
    assert doc["dataschema"] == "urn:eventplatform:schema:Product.Renamed:v3"
    assert doc["data"] == {"name": "Mug"}
    assert cloudevents.decode(encoded(state=state)).schema_version == 3


def test_a_type_that_is_not_uri_safe_is_percent_encoded_in_the_dataschema():
    doc = orjson.loads(encoded(topic="Order Line/Added"))
    assert doc["dataschema"] == "urn:eventplatform:schema:Order%20Line%2FAdded:v1"
    assert cloudevents.decode(encoded(topic="Order Line/Added")).type == "Order Line/Added"


def test_an_event_stored_tagged_is_published_in_the_plain_form():
    old, new = orjson.loads(encoded(state=TAGGED)), orjson.loads(encoded())
    assert old == new
    assert old["data"] == {"name": "Mug", "price": "9.50"}


def test_an_event_without_fields_has_an_empty_data_object():
    doc = orjson.loads(encoded(state=b'{"timestamp":"2026-11-24T10:00:00Z"}'))
    assert doc["data"] == {}


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
    assert (event.sequence, event.aggregate_version, event.schema_version) == (7, 2, 1)
    assert event.data == {"name": "Mug", "price": "9.50"}
    assert event.time == "2026-11-24T10:00:00.000001Z"
    assert event.dataschema == "urn:eventplatform:schema:Product.Renamed:v1"


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
        (orjson.dumps({**orjson.loads(encoded()), "sequence": 7}), "'sequence'"),
        (orjson.dumps({**orjson.loads(encoded()), "sequence": "7"}), "'sequence'"),
        (orjson.dumps({**orjson.loads(encoded()), "dataschema": None}), "'dataschema'"),
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
        ("sequence", str(2**63), "'sequence' must be a string of 19 digits within 1..2^63-1"),
        ("sequence", "0" * 19, "'sequence' must be a string of 19 digits within 1..2^63-1"),
        ("sequence", "7", "'sequence' must be a string of 19 digits"),
        ("sequence", "-000000000000000007", "'sequence' must be a string of 19 digits"),
        ("sequence", 7, "'sequence' must be a string of 19 digits"),
        ("aggregateversion", 2**31, "'aggregateversion' must be an integer within 1..2^31-1"),
        ("aggregateversion", 2**64, "'aggregateversion' must be an integer within"),
        ("aggregateversion", -(2**63) - 1, "'aggregateversion' must be an integer within"),
        ("aggregateversion", "2", "'aggregateversion' must be an integer within"),
        ("dataschema", "urn:eventplatform:schema:Product.Created:v1", "'dataschema' must be"),
        ("dataschema", "urn:eventplatform:schema:Product.Renamed:v0", "'dataschema' must be"),
        ("dataschema", "urn:eventplatform:schema:Product.Renamed:1", "'dataschema' must be"),
        ("dataschema", "https://example.com/x.json", "'dataschema' must be"),
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
