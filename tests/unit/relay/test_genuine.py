"""Judging a message that claims a notification: genuine, another database's, or forged."""

from __future__ import annotations

from uuid import UUID, uuid4

import orjson
import pytest

from eventplatform.messagebus import cloudevents
from eventplatform.relay.event_log import Notification
from eventplatform.relay.genuine import Verdict, carries, expected_body, judge

AGGREGATE = UUID("0b8a2c1e-5f7d-4c3a-9e1b-2d4f6a8c0e12")
STORED = Notification(
    7,
    AGGREGATE,
    2,
    "Product.Renamed",
    b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-24T17:42:00+00:00"},"name":"B"}',
)


def body_of(n: Notification, *, log: str = "products", state: bytes | None = None) -> bytes:
    return cloudevents.encode(
        log=log,
        notification_id=n.id,
        aggregate_id=n.originator_id,
        version=n.originator_version,
        topic=n.topic,
        state=state if state is not None else n.state,
    )


def test_the_relays_own_message_is_genuine():
    assert judge(expected_body("products", STORED), "products", 7, STORED) is Verdict.GENUINE


def test_the_same_event_laid_out_otherwise_is_genuine():
    # A relay of another version may order keys or space the JSON differently.
    reordered = orjson.dumps(dict(reversed(list(orjson.loads(body_of(STORED)).items()))))
    assert reordered != body_of(STORED)
    assert carries(reordered, "products", STORED)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"\x00\xff not json",
        b'{"specversion":"1.0"}',
        # the stored event's id with other data: a tampered copy
        body_of(STORED, state=b'{"name":"FORGED"}'),
        # the right event under another log's name
        body_of(STORED, log="orders"),
    ],
)
def test_anything_else_under_the_events_id_is_forged(body):
    assert judge(body, "products", 7, STORED) is Verdict.FORGED


def test_a_claim_the_log_cannot_back_is_forged_unless_a_relay_wrote_it():
    assert judge(b"{}", "products", 99, None) is Verdict.FORGED
    elsewhere = Notification(99, uuid4(), 1, "Product.Created", b'{"name":"E"}')
    assert judge(body_of(elsewhere), "products", 99, None) is Verdict.FOREIGN


def test_a_relays_message_of_another_event_at_the_same_id_is_foreign():
    other = Notification(7, uuid4(), 1, "Product.Created", b'{"name":"E"}')
    assert judge(body_of(other), "products", 7, STORED) is Verdict.FOREIGN


def test_a_message_whose_sequence_is_not_the_claimed_id_is_forged():
    assert judge(body_of(STORED), "products", 8, None) is Verdict.FORGED


def test_a_message_relays_published_before_the_plain_layout_is_genuine():
    """Streams written before issue 12 hold tagged data and integer sequences."""
    before = orjson.dumps(
        {
            "specversion": "1.0",
            "id": cloudevents.event_id(AGGREGATE, 2),
            "source": "products",
            "type": "Product.Renamed",
            "subject": str(AGGREGATE),
            "datacontenttype": "application/json",
            "sequence": 7,
            "aggregateversion": 2,
            "time": "2026-11-24T17:42:00+00:00",
            "data": orjson.Fragment(STORED.state),
        }
    )
    assert judge(before, "products", 7, STORED) is Verdict.GENUINE
    tampered = before.replace(b'"name":"B"', b'"name":"C"')
    assert judge(tampered, "products", 7, STORED) is Verdict.FORGED


def test_a_copy_with_another_time_or_schema_version_is_forged():
    doc = orjson.loads(body_of(STORED))
    later = orjson.dumps({**doc, "time": "2027-01-01T00:00:00Z"})
    v2 = orjson.dumps({**doc, "dataschema": doc["dataschema"].replace(":v1", ":v2")})
    assert judge(later, "products", 7, STORED) is Verdict.FORGED
    assert judge(v2, "products", 7, STORED) is Verdict.FORGED
