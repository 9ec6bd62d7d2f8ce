"""Reading the stream's tail without trusting it: how far the stream really holds a log.

On start, after a takeover and after any failed publish, the relay reads the end of the stream
for two things: the sequence its next message must expect (the fence), and how far the stream
already holds the log, so that a crash between the broker's ack and the position record
republishes nothing, even after the duplicate window.

Neither is taken from a message id alone (invariant 8). Walking back from the last message:

* messages of other logs are passed over;
* a message claiming this log is judged against the stored event it names
  (:mod:`eventplatform.relay.genuine`). Forged ones are passed over and reported; the relay
  resumes after the newest *genuine* one;
* a consistent relay message of this log for *another* event than the store's, with no genuine
  message after it, means the stream's history of the log is not this database's (another
  database publishes there, or the log was reset): :class:`StreamAheadOfLog`. Publishing on
  would interleave two histories, and JetStream would drop this log's events as duplicates of
  that history's;
* the position moves up to the newest genuine notification only over notifications the stream
  verifiably holds: the walk goes on down to the relay's position and the position stops before
  the first publishable notification it did not find. So a relay that was kept from publishing
  an event (see duplicates in :mod:`eventplatform.relay.relay`) never skips it after a restart,
  even though later events of its batch reached the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext

from eventplatform.errors import EventPlatformError
from eventplatform.relay.event_log import Notification
from eventplatform.relay.fencing import notification_of
from eventplatform.relay.genuine import Verdict, judge
from eventplatform.relay.stream_reader import stream_bounds, walk_back

#: How many messages the walk reads at most (at least twice the batch size is used).
MAX_SCAN = 10_000
#: Stored events fetched per store lookup once the walk goes deeper than the last message.
_LOOKUP_CHUNK = 256


class StreamAheadOfLog(EventPlatformError):
    """The stream's history of the log is another database's (or the log's before a reset).

    Attributes:
        stream: the stream.
        seq: the sequence of the newest foreign message.
        claimed: the notification id it claims.
    """

    def __init__(self, message: str, *, stream: str, seq: int, claimed: int) -> None:
        super().__init__(message)
        self.stream = stream
        self.seq = seq
        self.claimed = claimed


class LogSource(Protocol):
    """What the tail check reads from the store (:class:`~.event_log.PostgresEventLog`)."""

    @property
    def log(self) -> str:
        """The log's name."""
        ...

    async def between(self, after: int, upto: int) -> list[Notification]:
        """The notifications with ids in ``(after, upto]``, in order."""
        ...

    async def head(self) -> int:
        """The highest notification id of the log (0 when empty)."""
        ...


@dataclass(frozen=True, slots=True)
class Suspect:
    """A message that claims the log but does not carry the stored event it names.

    Attributes:
        seq: its stream sequence.
        claimed: the notification id its ``Nats-Msg-Id`` claims.
        verdict: forged, or a relay's message of another event (foreign).
        reason: why, for the operator.
    """

    seq: int
    claimed: int
    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class Tail:
    """What the end of the stream holds of the log.

    Attributes:
        last_sequence: the stream's last sequence: the fence of the next publish.
        newest: the newest notification of the log the stream ends with, genuine (0: none).
        resume: the position to resume after (never below the given position).
        verified: whether every publishable notification up to ``resume`` was found; False
            when the walk was cut short and ``resume`` is ``newest`` on trust.
        suspects: forged or foreign messages met on the way, newest first.
        passed_over: notifications up to ``resume`` the relay does not publish (unrouted,
            too large), for it to record.
    """

    last_sequence: int
    newest: int
    resume: int
    verified: bool = True
    suspects: list[Suspect] = field(default_factory=list)
    passed_over: list[Notification] = field(default_factory=list)


async def read_tail(
    js: JetStreamContext,
    stream: str,
    source: LogSource,
    *,
    position: int,
    publishes: Callable[[Notification], bool],
    max_scan: int = MAX_SCAN,
) -> Tail:
    """Reads how far the stream holds ``source``'s log beyond ``position`` (see the module).

    Args:
        js: JetStream.
        stream: the stream the relay publishes to.
        source: the log in the store.
        position: the relay's recorded position.
        publishes: whether the relay publishes a notification (routed, not too large).
        max_scan: how many messages to read back at most.

    Raises:
        StreamAheadOfLog: the stream ends with another history of the log.
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    log = source.log
    bounds = await stream_bounds(js, stream)
    lookup = _Lookup(source)
    suspects: list[Suspect] = []
    present: set[int] = set()
    newest = 0
    reached_position = False
    async for message in walk_back(
        js, stream, last=bounds.last, first=bounds.first, limit=max_scan
    ):
        claimed = notification_of(message.msg_id, log)
        if claimed is None:
            continue  # another log's, or no message id at all: not this log's business
        stored = await lookup.get(claimed)
        verdict = judge(message.data, log, claimed, stored)
        if verdict is Verdict.GENUINE:
            newest = newest or claimed
            if claimed <= position:
                reached_position = True
                break
            present.add(claimed)
            continue
        reason = await _reason(source, claimed, stored, verdict)
        if verdict is Verdict.FOREIGN and not newest:
            raise StreamAheadOfLog(
                _foreign_history(stream, log, message.seq, claimed, reason),
                stream=stream,
                seq=message.seq,
                claimed=claimed,
            )
        suspects.append(Suspect(message.seq, claimed, verdict, reason))
    if newest <= position:
        return Tail(bounds.last, newest, position, suspects=suspects)
    walked_everything = bounds.last - max(bounds.first, 1) + 1 <= max_scan
    if not (reached_position or walked_everything):
        return Tail(bounds.last, newest, newest, verified=False, suspects=suspects)
    resume = newest
    passed_over: list[Notification] = []
    for notification in await source.between(position, newest):
        if not publishes(notification):
            passed_over.append(notification)
        elif notification.id not in present:
            resume = notification.id - 1
            break
    passed_over = [n for n in passed_over if n.id <= resume]
    return Tail(bounds.last, newest, resume, suspects=suspects, passed_over=passed_over)


class _Lookup:
    """Stored events by id, fetched in chunks: the walk asks for decreasing ids."""

    def __init__(self, source: LogSource) -> None:
        self._source = source
        self._found: dict[int, Notification] = {}
        self._low: int | None = None  # ids in [low, high] were fetched
        self._high = 0

    async def get(self, notification_id: int) -> Notification | None:
        if self._low is not None and self._low <= notification_id <= self._high:
            return self._found.get(notification_id)
        # The first lookup is usually the only one (the tail is genuine): fetch one event.
        chunk = 1 if self._low is None else _LOOKUP_CHUNK
        low = max(0, notification_id - chunk)
        for n in await self._source.between(low, notification_id):
            self._found[n.id] = n
        self._low, self._high = low + 1, notification_id
        return self._found.get(notification_id)


async def _reason(
    source: LogSource, claimed: int, stored: Notification | None, verdict: Verdict
) -> str:
    if stored is None:
        head = await source.head()
        if claimed > head:
            return f"which the log does not have (its head is {head})"
        return "which the log does not have (a hole in its ids)"
    event = f"aggregate {stored.originator_id} version {stored.originator_version}"
    if verdict is Verdict.FOREIGN:
        return f"a relay's message of another event than the stored one ({event})"
    return f"which is not the relay's message of the stored event ({event})"


def _foreign_history(stream: str, log: str, seq: int, claimed: int, reason: str) -> str:
    return (
        f"stream {stream!r} seq {seq} holds {log}:{claimed}, {reason}, and no message of the"
        f" log after it matches the store: this stream's history of {log!r} comes from"
        " another database, or the log was reset. Publishing here would interleave two"
        " histories, and JetStream would drop this log's events as duplicates of that"
        f" history's. Use another stream (APP_STREAM); or, if the message is forged, delete"
        f" it (`nats stream rmm {stream} {seq}`, or `eventplatform audit --log {log}"
        " --delete-extra`) and start the relay again"
    )
