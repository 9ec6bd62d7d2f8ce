"""A received CloudEvent becomes the domain event again, only for declared classes."""

from decimal import Decimal

import pytest

from domain import Product
from eventplatform.consumers.decoding import EventDecoder, default_transcoder
from eventplatform.errors import DecodeError, UnknownEventType
from eventplatform.messagebus import cloudevents


def wire(event):
    stored_state = default_transcoder().encode(
        {k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")}
    )
    return cloudevents.decode(
        cloudevents.encode(
            log="products",
            notification_id=1,
            aggregate_id=event.originator_id,
            version=event.originator_version,
            topic=type(event).TOPIC,
            state=stored_state,
        )
    )


def test_a_declared_event_comes_back_as_the_domain_event():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    (created,) = product.collect_events()
    decoded = EventDecoder([Product.Created]).decode(wire(created))
    assert isinstance(decoded, Product.Created)
    assert decoded.originator_id == product.id
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


def _fields(envelope):
    return {name: getattr(envelope, name) for name in envelope.__slots__}
