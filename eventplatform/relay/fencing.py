"""The broker-side fence: JetStream appends a relay's message only right after its predecessor.

Every message the relay publishes says what the stream's last message must be:

* the first message after the relay learned the stream's tail carries
  ``Nats-Expected-Last-Sequence`` (the stream's last sequence). Sequences survive a server
  restart; on NATS 2.9 the last message *id* does not once the duplicate window has passed;
* every following message carries ``Nats-Expected-Last-Msg-Id``: its predecessor's
  ``Nats-Msg-Id``.

So a message lost in the middle of a pipelined batch makes every later one of the batch fail
instead of landing out of order, and a deposed leader that wakes up late cannot append behind
its successor's back. A refused message ("wrong last sequence / msg id") is not an outage: the
relay re-reads the stream's tail (:func:`read_tail`) and resumes after what is there.

The tail also makes publishing exactly-once beyond the duplicate window: on start and after
any failure the relay moves its position up to the last notification the stream already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.messagebus.cloudevents import MSG_ID_HEADER
from eventplatform.messagebus.nats_broker import OutgoingMessage

logger = logging.getLogger(__name__)

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
#: JetStream error codes of a failed expectation (JSStreamWrongLastMsgIDErrF, ...SequenceErrF).
FENCE_ERROR_CODES = frozenset({10070, 10071})
#: How far back :func:`read_tail` looks for the log's last message among others' messages.
MAX_SCAN = 10_000


class Refused(PublishError):
    """JetStream answered a publish with an error.

    Attributes:
        code: the HTTP-like status (400, 503...).
        err_code: JetStream's own error code (10070: wrong last msg id, ...).
    """

    def __init__(self, message: str, *, code: int | None, err_code: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


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
            Refused: JetStream refused a message (the earliest refusal; the later messages
                of the batch were refused too when it is a fence refusal).
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
                return [f.result() for f in futures]
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


def notification_of(msg_id: str | None, log: str) -> int | None:
    """The notification id in a ``<log>:<id>`` message id, or None if it is not ``log``'s."""
    if not msg_id:
        return None
    name, sep, number = msg_id.rpartition(":")
    if not sep or name != log or not number.isdigit():
        return None
    return int(number)


@dataclass(frozen=True, slots=True)
class StreamTail:
    """What the stream holds at its end.

    Attributes:
        last_sequence: the stream's last sequence (0 when it never held a message).
        last_notification: the highest notification id of the log found at the end of the
            stream (0 when none).
        scanned: messages read to find it.
    """

    last_sequence: int
    last_notification: int
    scanned: int


async def read_tail(
    js: JetStreamContext, stream: str, log: str, *, max_scan: int = MAX_SCAN
) -> StreamTail:
    """Reads the stream's last sequence and the last notification of ``log`` it holds.

    Walks back from the last message over other publishers' messages (dead letters share the
    stream) until one carries a ``<log>:<id>`` message id, at most ``max_scan`` messages.

    Raises:
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
    """
    try:
        info = await js.stream_info(stream)
        last = int(info.state.last_seq or 0)
        first = int(info.state.first_seq or 0)
        scanned = 0
        seq = last
        while seq >= max(first, 1) and scanned < max_scan:
            scanned += 1
            try:
                stored = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                seq -= 1  # deleted or expired
                continue
            notification = notification_of((stored.headers or {}).get(MSG_ID_HEADER), log)
            if notification is not None:
                return StreamTail(last, notification, scanned)
            seq -= 1
    except nats.js.errors.NotFoundError as e:
        msg = f"JetStream stream {stream!r} does not exist"
        raise PublishError(msg) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        msg = f"JetStream unavailable while reading the tail of {stream!r}: {e!r}"
        raise BrokerUnavailable(msg) from e
    if scanned >= max_scan:
        logger.warning(
            "no message of log %r among the last %d of stream %r: is the stream shared?",
            log,
            max_scan,
            stream,
        )
    return StreamTail(last, 0, scanned)
