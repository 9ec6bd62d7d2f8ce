"""A received CloudEvent becomes the domain event again, only for declared classes, and only
when its data fits the class: every field present, every value of its type."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from domain import Product
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.errors import DecodeError, UnknownEventType
from eventplatform.messagebus import cloudevents
from eventplatform.store.mapper import PlainJSONMapper

AGGREGATE = uuid.uuid4()
NOW = datetime.now(UTC).isoformat()


def wire(event):
    stored = PlainJSONMapper().to_stored_event(event)
    return cloudevents.decode(
        cloudevents.encode(
            log="products",
            notification_id=1,
            aggregate_id=stored.originator_id,
            version=stored.originator_version,
            topic=stored.topic,
            state=stored.state,
        )
    )


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


def test_a_declared_event_comes_back_as_the_domain_event():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    (created,) = product.collect_events()
    decoded = EventDecoder([Product.Created]).decode(wire(created))
    assert isinstance(decoded, Product.Created)
    assert decoded == created
    assert decoded.price == Decimal("9.50")
    assert decoded.timestamp == created.timestamp


def test_an_undeclared_type_stays_an_envelope_or_is_refused_when_strict():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    envelope = wire(product.collect_events()[0])
    assert EventDecoder([]).decode(envelope) is envelope
    with pytest.raises(UnknownEventType, match=r"Product\.Created"):
        EventDecoder([], strict=True).decode(envelope)


def test_a_message_never_makes_the_consumer_import_what_it_names():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    envelope = wire(product.collect_events()[0])
    hostile = cloudevents.CloudEvent(**{**_fields(envelope), "type": "os:system"})
    with pytest.raises(UnknownEventType):
        EventDecoder([Product.Created], strict=True).decode(hostile)


def test_a_subject_that_is_not_an_aggregate_id_is_a_decode_error():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    envelope = wire(product.collect_events()[0])
    broken = cloudevents.CloudEvent(**{**_fields(envelope), "subject": "nope"})
    with pytest.raises(DecodeError, match="not an aggregate UUID"):
        EventDecoder([Product.Created]).decode(broken)


def test_a_well_formed_event_decodes_with_its_types():
    event = decode("Product.PriceChanged", price="9.50")
    assert event.price == Decimal("9.50")
    assert event.originator_id == AGGREGATE


def test_a_missing_field_is_named():
    with pytest.raises(DecodeError, match=r"Product\.Renamed lacks its field 'name'"):
        decode("Product.Renamed")


@pytest.mark.parametrize(
    ("state", "complaint"),
    [
        ({"price": "cheap"}, "field 'price': Input should be a valid decimal, got str"),
        ({"price": None}, "field 'price': .*got NoneType"),
        ({"price": {"a": 1}}, "field 'price': .*got dict"),
        ({"price": True}, "field 'price': .*got bool"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(state, complaint):
    with pytest.raises(DecodeError, match=complaint):
        decode("Product.PriceChanged", **state)


def test_a_bool_is_not_a_string_and_a_number_is_not_a_string():
    with pytest.raises(DecodeError, match="field 'name': Input should be a valid string"):
        decode("Product.Renamed", name=True)
    with pytest.raises(DecodeError, match="field 'name': Input should be a valid string"):
        decode("Product.Renamed", name=5)


def test_a_field_the_class_does_not_know_is_allowed_for_forward_compatibility():
    assert decode("Product.Renamed", name="x", colour="red").name == "x"


def test_a_message_without_time_lacks_the_timestamp_its_class_needs():
    envelope = wire(Product.create("Mug", "MUG-1", Decimal("9.50")).collect_events()[0])
    timeless = cloudevents.CloudEvent(**{**_fields(envelope), "time": None})
    with pytest.raises(DecodeError, match="lacks its field 'timestamp'"):
        EventDecoder([Product.Created]).decode(timeless)


def test_a_version_newer_than_the_class_is_refused_not_guessed():
    envelope = wire(Product.create("Mug", "MUG-1", Decimal("9.50")).collect_events()[0])
    newer = cloudevents.CloudEvent(**{**_fields(envelope), "schema_version": 2})
    with pytest.raises(DecodeError, match="version 2 but this code's class is version 1"):
        EventDecoder([Product.Created]).decode(newer)


def _fields(envelope):
    return {name: getattr(envelope, name) for name in envelope.__slots__}
