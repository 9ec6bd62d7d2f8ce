"""The broker-side fence: JetStream appends a relay's message only right after its predecessor.

Every message the relay publishes says what the stream's last message must be:

* the first message after the relay learned the stream's tail carries
  ``Nats-Expected-Last-Sequence`` (the stream's last sequence). Sequences survive a server
  restart; on NATS 2.9 the last message *id* does not once the duplicate window has passed;
* every following message carries ``Nats-Expected-Last-Msg-Id``: its predecessor's
  ``Nats-Msg-Id``.

So a message lost in the middle of a pipelined batch makes every later one of the batch fail
instead of landing out of order, and a deposed leader that wakes up late cannot append behind
its successor's back. A message JetStream drops as a duplicate does not become the stream's
last message either, so the rest of its batch is refused too, unless the message it was taken
for is itself the stream's last: only a message published under the relay's very next id, in
the instant before the relay's own, lets the batch go on past it (see duplicates in
:mod:`eventplatform.relay.relay`). Sequences alone would fence less: after a refusal, *any*
single foreign message would fill the slot the next message expects.

A refused message ("wrong last sequence / msg id") is not an outage: the relay re-reads the
stream's tail (:mod:`eventplatform.relay.tail`) and resumes after what is there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.messagebus.cloudevents import MSG_ID_HEADER
from eventplatform.messagebus.nats_broker import OutgoingMessage

logger = logging.getLogger(__name__)

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
#: Marks a message ``eventplatform audit --repair`` published again after later ones: it is
#: out of order on purpose, and the audit says so instead of flagging it.
REPUBLISHED_HEADER = "Eventplatform-Republished"
#: JetStream error codes of a failed expectation (JSStreamWrongLastMsgIDErrF, ...SequenceErrF).
FENCE_ERROR_CODES = frozenset({10070, 10071})
#: ``NATS/1.0\r\n`` before the headers and ``\r\n`` after them, as nats-py writes them.
_HEADER_FRAME = len(b"NATS/1.0\r\n\r\n")


class Refused(PublishError):
    """JetStream answered a publish with an error.

    Attributes:
        code: the HTTP-like status (400, 503...).
        err_code: JetStream's own error code (10070: wrong last msg id, ...).
        acked: when raised by :meth:`FencedPublisher.publish_batch`, the acks of the messages
            before the refused one, in order (some may be duplicates: check them).
    """

    def __init__(self, message: str, *, code: int | None, err_code: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.acked: list[api.PubAck] = []


def is_fence_error(e: BaseException) -> bool:
    """Whether ``e`` (or its cause) is JetStream refusing a message's expected-last header."""
    current: BaseException | None = e
    while current is not None:
        if isinstance(current, Refused) and current.err_code in FENCE_ERROR_CODES:
            return True
        if isinstance(current, nats.js.errors.APIError) and current.err_code in FENCE_ERROR_CODES:
            return True
        current = current.__cause__
    return False


class FencedPublisher:
    """Publishes a batch pipelined and reads every message's ack, refusals included.

    Not ``JetStreamContext.publish_async``: in nats-py 2.16 its reply handler *raises* the
    API error (``APIError.from_error`` raises instead of returning) inside the subscription
    callback, so a refused message's future never completes and a fence refusal looks like a
    lost ack (a full ack timeout). Here each batch gets its own reply subject per message and
    the answers are parsed here.

    Args:
        nc: a connected NATS client.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, timeout: float = 10.0
    ) -> list[api.PubAck]:
        """Publishes ``messages`` back to back and waits until each is answered.

        Returns:
            The acks, in order.

        Raises:
            Refused: JetStream refused a message (the earliest refusal, carrying the acks of
                the messages before it; the later messages of the batch were refused too when
                it is a fence refusal).
            BrokerUnavailable: not every answer arrived in time, or the connection failed.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[api.PubAck]] = [loop.create_future() for _ in messages]
        prefix = self._nc.new_inbox()

        async def on_reply(msg: Msg) -> None:
            index = int(msg.subject.rpartition(".")[2])
            if 0 <= index < len(futures) and not futures[index].done():
                _settle(futures[index], msg, messages[index].msg_id)

        try:
            sub = await self._nc.subscribe(f"{prefix}.*", cb=on_reply)
        except (nats.errors.Error, OSError) as e:
            msg = f"NATS unavailable while publishing {len(messages)} messages: {e!r}"
            raise BrokerUnavailable(msg) from e
        try:
            for i, m in enumerate(messages):
                headers = {MSG_ID_HEADER: m.msg_id}
                if m.headers:
                    headers.update(m.headers)
                await self._nc.publish(m.subject, m.body, reply=f"{prefix}.{i}", headers=headers)
            if not futures:
                return []
            async with asyncio.timeout(timeout):
                # One wait for the whole batch (a wait per message cost 16% of the relay's
                # time). On a refusal, let the messages before it settle too, so the
                # earliest refusal is the one raised by result() below.
                await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
                failed = next(
                    (i for i, f in enumerate(futures) if f.done() and f.exception() is not None),
                    None,
                )
                if failed:
                    await asyncio.wait(futures[:failed])
                return _acks_or_refusal(futures)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            msg = f"JetStream did not acknowledge {len(messages)} messages: {e!r}"
            raise BrokerUnavailable(msg) from e
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, OSError):
                logger.debug("unsubscribing the ack inbox failed", exc_info=True)


def _acks_or_refusal(futures: list[asyncio.Future[api.PubAck]]) -> list[api.PubAck]:
    """The acks in order, or the earliest refusal carrying the acks before it."""
    acks: list[api.PubAck] = []
    for future in futures:
        error = future.exception()
        if error is not None:
            if isinstance(error, Refused):
                error.acked = acks
            raise error
        acks.append(future.result())
    return acks


def _settle(future: asyncio.Future[api.PubAck], msg: Msg, msg_id: str) -> None:
    if msg.headers and msg.headers.get("Status") == "503":
        future.set_exception(BrokerUnavailable(f"no JetStream stream answered {msg_id}"))
        return
    try:
        resp = json.loads(msg.data)
    except ValueError:
        future.set_exception(BrokerUnavailable(f"unreadable ack for {msg_id}: {msg.data!r}"))
        return
    error = resp.get("error")
    if error:
        description = error.get("description", "")
        future.set_exception(
            Refused(
                f"JetStream refused {msg_id}: {description}",
                code=error.get("code"),
                err_code=error.get("err_code"),
            )
        )
        return
    future.set_result(api.PubAck.from_response(resp))


def fence_headers(previous_msg_id: str | None, last_sequence: int | None) -> dict[str, str]:
    """The expected-last header of one message.

    Args:
        previous_msg_id: the ``Nats-Msg-Id`` of the message published just before it, or
            None for the first message after the tail was read.
        last_sequence: the stream's last sequence, used when there is no predecessor.

    Raises:
        ValueError: neither is known (read the tail first).
    """
    if previous_msg_id is not None:
        return {EXPECTED_LAST_MSG_ID: previous_msg_id}
    if last_sequence is None:
        msg = "neither the previous message id nor the stream's last sequence is known"
        raise ValueError(msg)
    return {EXPECTED_LAST_SEQUENCE: str(last_sequence)}


def wire_size(body: bytes, msg_id: str, headers: Mapping[str, str] | None) -> int:
    """Bytes a message counts against the server's ``max_payload``: payload and headers.

    nats-py checks only the payload before sending; the server counts both and closes the
    connection of a client that sends more than ``max_payload``.
    """
    size = _HEADER_FRAME + len(body) + len(MSG_ID_HEADER) + 4 + len(msg_id.encode())
    if headers:
        for key, value in headers.items():
            size += len(key.encode()) + 4 + len(value.encode())
    return size


#: The largest notification id: PostgreSQL's bigint.
MAX_NOTIFICATION_ID = 2**63 - 1


def notification_of(msg_id: str | None, log: str) -> int | None:
    """The notification id in a ``<log>:<id>`` message id, or None if it is not ``log``'s.

    Anyone may publish any message id: only ASCII digits naming a bigint count (``"²"`` is a
    digit to ``str.isdigit`` and not to ``int``; 2^63 does not fit the column).
    """
    if not msg_id:
        return None
    name, sep, number = msg_id.rpartition(":")
    if not sep or name != log or not (number.isascii() and number.isdigit()):
        return None
    value = int(number)
    return value if value <= MAX_NOTIFICATION_ID else None
