"""A message's JetStream store time is read from its reply subject as nats-py reads it."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from eventplatform.consumers.acking import stored_at

V1 = "$JS.ACK.EVENTS.view-t3.1.42.40.1795542120810123456.7"
V2 = "$JS.ACK.hub.ACCHASH.EVENTS.view-t3.1.42.40.1795542120810123456.7.r4nd"


@pytest.mark.parametrize("reply", [V1, V2])
def test_the_store_time_is_the_one_nats_py_parses_from_the_reply(reply):
    msg = Msg(_client=None, subject="events.Product.Created", reply=reply)  # type: ignore[arg-type]
    assert stored_at(msg) == pytest.approx(msg.metadata.timestamp.timestamp(), abs=1e-6)


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.too.few", "$JS.ACK.A.B.1.2.3.x.5"])
def test_a_reply_that_is_no_jetstream_ack_has_no_store_time(reply):
    assert stored_at(Msg(_client=None, subject="s", reply=reply)) is None  # type: ignore[arg-type]
