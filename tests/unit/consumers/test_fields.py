"""A decoded event is checked against its class: fields present, values of their types."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from domain import Product
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.errors import DecodeError
from eventplatform.messagebus import cloudevents

AGGREGATE = uuid.uuid4()
NOW = {"_type_": "datetime_iso", "_data_": datetime.now(UTC).isoformat()}


def decode(topic: str, **state):
    body = cloudevents.encode(
        log="products",
        notification_id=1,
        aggregate_id=AGGREGATE,
        version=2,
        topic=topic,
        state=orjson.dumps({"timestamp": NOW, **state}),
    )
    decoder = EventDecoder([Product.Created, Product.PriceChanged, Product.Renamed])
    return decoder.decode(cloudevents.decode(body))


def test_a_well_formed_event_decodes_with_its_types():
    event = decode("Product.PriceChanged", price={"_type_": "decimal_str", "_data_": "9.50"})
    assert event.price == Decimal("9.50")
    assert event.originator_id == AGGREGATE


def test_a_missing_field_is_named():
    with pytest.raises(DecodeError, match=r"Product\.Renamed lacks its field 'name'"):
        decode("Product.Renamed")


@pytest.mark.parametrize(
    ("state", "complaint"),
    [
        ({"price": "9.50"}, "field 'price' must be Decimal, got str"),
        ({"price": 9.5}, "field 'price' must be Decimal, got float"),
        ({"price": None}, "field 'price' must be Decimal, got NoneType"),
        ({"price": {"a": 1}}, "field 'price' must be Decimal, got dict"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(state, complaint):
    with pytest.raises(DecodeError, match=complaint):
        decode("Product.PriceChanged", **state)


def test_a_bool_is_not_an_int_and_a_string_is_not_a_timestamp():
    with pytest.raises(DecodeError, match="field 'timestamp' must be datetime, got str"):
        decode("Product.Renamed", name="x", timestamp="2026-01-01T00:00:00+00:00")
    with pytest.raises(DecodeError, match="field 'name' must be str, got bool"):
        decode("Product.Renamed", name=True)


def test_a_field_the_class_does_not_know_is_allowed_for_forward_compatibility():
    assert decode("Product.Renamed", name="x", colour="red").name == "x"
