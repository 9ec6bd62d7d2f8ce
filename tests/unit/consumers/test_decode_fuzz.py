"""Fuzzing the decode path: whatever the bytes, a message ends decoded or with a reason.

A consumer dead-letters a message exactly when :func:`read_message` returns an error, and
applies it otherwise; so "never raises, and always one of the two" is "never crashes the
consumer, never drops a message without a record".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import Product
from eventplatform.consumers.decoding import EventDecoder
from eventplatform.consumers.intake import Intake, read_message
from eventplatform.messagebus import cloudevents
from eventplatform.store.mapper import PlainJSONMapper

STRICT = EventDecoder(
    [Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued], strict=True
)
LENIENT = EventDecoder([Product.Created, Product.Renamed])


def valid_body() -> bytes:
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    stored = PlainJSONMapper().to_stored_event(product.collect_events()[0])
    return cloudevents.encode(
        log="products",
        notification_id=1,
        aggregate_id=stored.originator_id,
        version=1,
        topic=stored.topic,
        state=stored.state,
    )


VALID = valid_body()
VALID_DOC: dict[str, Any] = orjson.loads(VALID)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def ends_well(intake: Intake) -> None:
    if intake.error is None:
        assert intake.envelope is not None
        assert intake.event is not None
    else:
        assert intake.error.strip()
        assert intake.event is None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000))
def test_random_bytes_are_decoded_or_given_a_reason(body):
    ends_well(read_message(body, STRICT))
    ends_well(read_message(body, LENIENT))


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncated_json_is_given_a_reason(cut):
    intake = read_message(VALID[:cut], STRICT)
    assert intake.error is not None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID_DOC)), json_values)
def test_any_envelope_attribute_of_any_type_is_decoded_or_given_a_reason(name, value):
    body = orjson.dumps({**VALID_DOC, name: value})
    ends_well(read_message(body, STRICT))
    ends_well(read_message(body, LENIENT))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID_DOC["data"])), json_values)
def test_any_event_field_of_any_type_is_decoded_or_given_a_reason(name, value):
    body = orjson.dumps({**VALID_DOC, "data": {**VALID_DOC["data"], name: value}})
    ends_well(read_message(body, STRICT))


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_arbitrary_data_objects_are_decoded_or_given_a_reason(data):
    ends_well(read_message(orjson.dumps({**VALID_DOC, "data": data}), STRICT))


@settings(max_examples=5, deadline=None)
@given(st.integers(min_value=1, max_value=8))
def test_huge_payloads_are_decoded_or_given_a_reason(megabytes):
    blob = "x" * (megabytes * 1_000_000)
    with_big_field = orjson.dumps({**VALID_DOC, "data": {**VALID_DOC["data"], "name": blob}})
    with_big_extra = orjson.dumps({**VALID_DOC, "blob": blob})
    ends_well(read_message(with_big_field, STRICT))
    ends_well(read_message(with_big_extra, STRICT))
    ends_well(read_message(b"[" * (megabytes * 100_000), STRICT))


def test_the_valid_message_decodes():
    intake = read_message(VALID, STRICT)
    assert intake.error is None
    assert isinstance(intake.event, Product.Created)
    assert intake.event.price == Decimal("9.50")


def test_unknown_types_are_errors_for_a_strict_decoder_and_envelopes_for_a_lenient_one():
    exploded = {
        "type": "Product.Exploded",
        "dataschema": "urn:eventplatform:schema:Product.Exploded:v1",
    }
    body = orjson.dumps({**VALID_DOC, **exploded})
    assert "unknown event type" in (read_message(body, STRICT).error or "")
    lenient = read_message(body, LENIENT)
    assert lenient.error is None
    assert isinstance(lenient.event, cloudevents.CloudEvent)


def test_a_data_object_that_carries_envelope_fields_cannot_override_them():
    forged = {"timestamp": "1999-01-01T00:00:00Z", "class_version": 9, "originator_version": 7}
    intake = read_message(
        orjson.dumps({**VALID_DOC, "data": {**VALID_DOC["data"], **forged}}), STRICT
    )
    assert intake.error is None
    assert isinstance(intake.event, Product.Created)
    assert intake.event.timestamp.isoformat().startswith(VALID_DOC["time"][:19])
    assert intake.event.originator_version == 1


def test_numbers_beyond_any_range_are_given_a_reason():
    body = VALID.replace(b'"aggregateversion":1', b'"aggregateversion":1' + b"0" * 400)
    ends_well(read_message(body, STRICT))
    ends_well(
        read_message(
            VALID.replace(b'"sequence":"0000000000000000001"', b'"sequence":1e999'), STRICT
        )
    )
