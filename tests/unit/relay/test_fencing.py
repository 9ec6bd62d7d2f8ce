"""The broker-side fence's pieces: headers, message ids, which refusals are fence refusals."""

from __future__ import annotations

import pytest

from eventplatform.errors import PublishError
from eventplatform.relay.fencing import (
    Refused,
    fence_headers,
    is_fence_error,
    notification_of,
    wire_size,
)


def test_the_first_message_after_the_tail_expects_the_streams_last_sequence():
    assert fence_headers(None, 41) == {"Nats-Expected-Last-Sequence": "41"}


def test_every_following_message_expects_its_predecessors_message_id():
    assert fence_headers("products:7", 41) == {"Nats-Expected-Last-Msg-Id": "products:7"}


def test_without_a_known_tail_no_header_can_be_made():
    with pytest.raises(ValueError, match="neither the previous message id"):
        fence_headers(None, None)


def test_the_wire_size_counts_payload_and_headers_as_nats_py_writes_them():
    headers = {"Nats-Expected-Last-Sequence": "41"}
    written = b"NATS/1.0\r\nNats-Msg-Id: products:7\r\nNats-Expected-Last-Sequence: 41\r\n\r\n"
    assert wire_size(b"x" * 100, "products:7", headers) == 100 + len(written)


@pytest.mark.parametrize(
    ("msg_id", "expected"),
    [
        ("products:12", 12),
        ("products:0", 0),
        ("orders:12", None),
        ("dlq:products:12", None),
        ("products:x", None),
        ("products:\u00b2", None),  # a digit to str.isdigit, not to int
        ("products:\u0663", None),  # Arabic-Indic three
        ("products:-1", None),
        (f"products:{2**63 - 1}", 2**63 - 1),
        (f"products:{2**63}", None),  # beyond bigint
        ("products", None),
        ("", None),
        (None, None),
    ],
)
def test_only_this_logs_message_ids_name_a_notification(msg_id, expected):
    assert notification_of(msg_id, "products") == expected


@pytest.mark.parametrize(("err_code", "fence"), [(10070, True), (10071, True), (10059, False)])
def test_wrong_last_msg_id_and_sequence_are_fence_refusals(err_code, fence):
    refused = Refused("refused", code=400, err_code=err_code)
    wrapped = PublishError("wrapped")
    wrapped.__cause__ = refused
    assert is_fence_error(refused) is fence
    assert is_fence_error(wrapped) is fence
