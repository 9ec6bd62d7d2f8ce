"""Reading back what a JetStream stream holds: one message, the tail backwards, or everything.

The relay reads the stream to reconcile its position (:mod:`eventplatform.relay.tail`), to check
a duplicate ack, and the audit reads it whole (:mod:`eventplatform.relay.audit`). Every failure
is translated here: :class:`~eventplatform.errors.BrokerUnavailable` when JetStream does not
answer, :class:`~eventplatform.errors.PublishError` when the stream does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.messagebus.cloudevents import MSG_ID_HEADER

logger = logging.getLogger(__name__)

#: JetStream's error code for a missing stream (a missing message is 10037).
_STREAM_NOT_FOUND = 10059
#: Messages handed over per list by :func:`scan`.
SCAN_BATCH = 1000
#: Seconds :func:`scan` waits for the next message before it asks the server whether any is due.
_SCAN_POLL = 2.0
#: Seconds without any message while some are due before :func:`scan` gives up.
_SCAN_STALL = 30.0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the stream holds it.

    Attributes:
        seq: its stream sequence.
        subject: the subject it was published on.
        headers: its headers (empty when it has none).
        data: its payload.
    """

    seq: int
    subject: str
    headers: Mapping[str, str] = field(default_factory=dict)
    data: bytes = b""

    @property
    def msg_id(self) -> str | None:
        """Its ``Nats-Msg-Id`` header, if any."""
        return self.headers.get(MSG_ID_HEADER)


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """The sequences a stream spans.

    Attributes:
        first: the first sequence it still holds (``last + 1`` when empty).
        last: the last sequence it ever assigned (0 when it never held a message).
        messages: how many messages it holds.
        deleted: how many messages between ``first`` and ``last`` were deleted.
    """

    first: int
    last: int
    messages: int
    deleted: int = 0


async def stream_bounds(js: JetStreamContext, stream: str) -> StreamBounds:
    """Reads the stream's first and last sequence.

    Raises:
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
    """
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError as e:
        msg = f"JetStream stream {stream!r} does not exist"
        raise PublishError(msg) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        msg = f"JetStream unavailable while reading stream {stream!r}: {e!r}"
        raise BrokerUnavailable(msg) from e
    state = info.state
    return StreamBounds(
        first=int(state.first_seq or 0),
        last=int(state.last_seq or 0),
        messages=int(state.messages or 0),
        deleted=int(state.num_deleted or 0),
    )


async def get_message(js: JetStreamContext, stream: str, seq: int) -> StoredMessage | None:
    """Reads the message at ``seq``; None when the stream no longer holds it.

    Raises:
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
    """
    try:
        raw = await js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError as e:
        if e.err_code == _STREAM_NOT_FOUND:
            msg = f"JetStream stream {stream!r} does not exist"
            raise PublishError(msg) from e
        return None  # deleted or expired
    except (TimeoutError, nats.errors.Error, OSError) as e:
        msg = f"JetStream unavailable while reading {stream!r} seq {seq}: {e!r}"
        raise BrokerUnavailable(msg) from e
    return StoredMessage(
        seq=int(raw.seq or seq),
        subject=str(raw.subject or ""),
        headers=dict(raw.headers or {}),
        data=bytes(raw.data or b""),
    )


async def walk_back(
    js: JetStreamContext, stream: str, *, last: int, first: int, limit: int
) -> AsyncIterator[StoredMessage]:
    """Yields the stream's messages from ``last`` down to ``first``, at most ``limit`` of them.

    Deleted sequences are passed over (they count against ``limit``: the walk is bounded in
    requests, not in messages found).

    Raises:
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
    """
    seq = last
    asked = 0
    while seq >= max(first, 1) and asked < limit:
        asked += 1
        message = await get_message(js, stream, seq)
        seq -= 1
        if message is not None:
            yield message


async def scan(
    nc: Client, js: JetStreamContext, stream: str, *, start: int, end: int
) -> AsyncIterator[list[StoredMessage]]:
    """Yields every message with a sequence from ``start`` to ``end``, in order, in lists.

    Reads with an ephemeral ordered push consumer (flow control, no acks): about ten times as
    fast as one request per message, and it starts over by itself after a lost message. The
    consumer is removed when the scan ends or is abandoned.

    Raises:
        BrokerUnavailable: JetStream did not answer, or no message arrived for a long time
            while some were due.
        PublishError: the stream does not exist.
    """
    if end < start:
        return
    queue: asyncio.Queue[list[StoredMessage] | None] = asyncio.Queue(maxsize=8)
    buffer: list[StoredMessage] = []
    finished = False

    async def on_message(msg: Msg) -> None:
        nonlocal buffer, finished
        if finished:
            return
        seq, pending = _position_of(msg.reply)
        if seq > end:
            finished = True
        else:
            buffer.append(StoredMessage(seq, msg.subject, dict(msg.headers or {}), bytes(msg.data)))
            finished = seq >= end or pending == 0
        if finished or len(buffer) >= SCAN_BATCH:
            batch, buffer = buffer, []
            # Blocking here holds back the flow-control reply: the server stops sending
            # until the reader has caught up, so memory stays bounded.
            await queue.put(batch)
            if finished:
                await queue.put(None)

    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
    )
    try:
        sub = await js.subscribe(
            ">",
            stream=stream,
            cb=on_message,
            ordered_consumer=True,
            config=config,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1 << 30,
        )
    except nats.js.errors.NotFoundError as e:
        msg = f"JetStream stream {stream!r} does not exist"
        raise PublishError(msg) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        msg = f"JetStream unavailable while scanning {stream!r}: {e!r}"
        raise BrokerUnavailable(msg) from e
    try:
        waited = 0.0
        while True:
            try:
                batch = await asyncio.wait_for(queue.get(), timeout=_SCAN_POLL)
            except TimeoutError:
                waited += _SCAN_POLL
                if not finished and not await _messages_due(sub):
                    return
                if waited >= _SCAN_STALL:
                    msg = f"no message of {stream!r} arrived for {waited:.0f} s while scanning"
                    raise BrokerUnavailable(msg) from None
                continue
            if batch is None:
                return
            waited = 0.0
            if batch:
                yield batch
    finally:
        finished = True
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await sub.unsubscribe()


async def _messages_due(sub: object) -> bool:
    """Whether the scan's consumer still has messages to deliver."""
    try:
        info = await sub.consumer_info()  # type: ignore[attr-defined]
    except (TimeoutError, nats.errors.Error, OSError) as e:
        logger.debug("consumer info of a scan failed: %r", e)
        return True
    return bool(info.num_pending) or bool(info.num_ack_pending)


def _position_of(reply: str | None) -> tuple[int, int]:
    """Stream sequence and pending count from a JetStream delivery's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens), or
    with domain and account hash in front of the stream (12 tokens).
    """
    tokens = (reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 12:
        return int(tokens[7]), int(tokens[10])
    msg = f"not a JetStream delivery: reply subject {reply!r}"
    raise BrokerUnavailable(msg)
