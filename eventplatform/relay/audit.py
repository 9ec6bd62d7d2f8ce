"""Auditing a stream against the store: is every event there, once, in order, and nothing else?

The relay trusts an acknowledgement forever. A single-replica stream can lose acknowledged
messages (an OS crash before JetStream wrote them to disk), an operator can delete one, a
forger can add some; nothing in the data path notices, and every consumer misses what is gone.
The audit reads the whole stream once (an ephemeral ordered consumer) and, for each audited log,
the store in id order, and reports:

* **missing**: stored, routed events up to the relay's position (read before the stream, so
  everything up to it was acknowledged) that the stream does not hold;
* **extra**: messages claiming the log that do not carry the stored event they name (forged,
  or another database's);
* **duplicated**: a notification the stream holds more than once;
* **out of order**: a notification that comes after a later one of the same log (messages
  ``eventplatform audit --repair`` republished are counted apart: out of order on purpose);
* what the relay skipped on purpose (unrouted, oversized), and what retention took (events
  older than the stream's first message of the log are not checked when the stream no longer
  starts at sequence 1).

Memory stays small for millions of messages: a bitmap of the notification ids seen, lists of
findings (complete for missing events, the repair needs them; capped at :data:`MAX_LISTED` for
the rest, which are counted in full).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from eventplatform.relay.event_log import Notification, PostgresEventLog
from eventplatform.relay.fencing import REPUBLISHED_HEADER, notification_of
from eventplatform.relay.genuine import Verdict, judge
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.stream_reader import StoredMessage, scan, stream_bounds

#: Findings of one kind listed per log (all are counted).
MAX_LISTED = 1000
#: Store ids read per query when looking for missing events.
_ID_PAGE = 50_000


@dataclass(frozen=True, slots=True)
class Extra:
    """A message that claims the log without carrying its stored event.

    Attributes:
        seq: its stream sequence.
        claimed: the notification id its message id claims (0 when malformed).
        verdict: ``forged`` or ``foreign`` (a relay's message of another event).
        reason: why, for the operator.
    """

    seq: int
    claimed: int
    verdict: str
    reason: str


@dataclass(frozen=True, slots=True)
class Placed:
    """A genuine message in an unexpected place: ``notification`` at stream ``seq``."""

    notification: int
    seq: int


@dataclass(slots=True)
class Findings:
    """Findings of one kind: a number for each (complete), details for the first ones.

    Attributes:
        keys: the stream sequence of each extra message, the notification id of each
            other finding; complete (the repair and ``--delete-extra`` act on them).
        listed: the first :data:`MAX_LISTED` findings in detail.
    """

    keys: list[int] = field(default_factory=list)
    listed: list[Any] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many there are."""
        return len(self.keys)

    def add(self, key: int, item: Any) -> None:
        """Counts ``item`` under ``key``, and lists it while the list is short."""
        self.keys.append(key)
        if len(self.listed) < MAX_LISTED:
            self.listed.append(item)


@dataclass(slots=True)
class LogAudit:
    """What the stream holds of one log, compared with the store.

    Attributes:
        log: the log.
        head: the log's highest notification id when the audit started.
        relay_position: the relay's position then: every routed event up to it must be there.
        in_stream: events of the log found in the stream (each counted once).
        missing: ids of the stored, routed events up to the relay's position the stream
            lacks (complete).
        extra: messages claiming the log that do not carry its stored events.
        duplicated: notifications found again (:class:`Placed`, at the repeat's sequence).
        out_of_order: notifications found after a later one of the log.
        republished: notifications ``audit --repair`` republished after later ones.
        unrouted: events the relay recorded as unrouted (never published).
        oversized: ids of events the relay recorded as too large and the stream lacks.
        not_checked_below: store ids below this were not checked: the stream no longer
            holds messages that old (retention); 0 when everything was checked.
    """

    log: str
    head: int
    relay_position: int
    in_stream: int = 0
    missing: list[int] = field(default_factory=list)
    extra: Findings = field(default_factory=Findings)
    duplicated: Findings = field(default_factory=Findings)
    out_of_order: Findings = field(default_factory=Findings)
    republished: Findings = field(default_factory=Findings)
    unrouted: int = 0
    oversized: list[int] = field(default_factory=list)
    not_checked_below: int = 0

    @property
    def problems(self) -> int:
        """How many findings are wrong (missing, extra, duplicated, out of order)."""
        return (
            len(self.missing) + self.extra.count + self.duplicated.count + self.out_of_order.count
        )

    @property
    def ok(self) -> bool:
        """Whether the stream holds the log exactly."""
        return self.problems == 0


@dataclass(slots=True)
class StreamAudit:
    """An audit of one stream.

    Attributes:
        stream: the stream.
        first_seq: its first sequence when read.
        last_seq: its last sequence when read (the audit reads up to it).
        messages: the messages read.
        logs: one audit per log.
        other: messages claiming none of the audited logs (other logs, or no message id).
        seconds: how long it took.
    """

    stream: str
    first_seq: int
    last_seq: int
    messages: int = 0
    logs: list[LogAudit] = field(default_factory=list)
    other: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every audited log is held exactly."""
        return all(log.ok for log in self.logs)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of findings capped, counts complete)."""
        out = asdict(self)
        out["ok"] = self.ok
        for log, audit in zip(out["logs"], self.logs, strict=True):
            log["ok"] = audit.ok
            log["problems"] = audit.problems
            log["missing"] = {"count": len(audit.missing), "listed": audit.missing[:MAX_LISTED]}
            for kind in ("extra", "duplicated", "out_of_order", "republished"):
                findings: Findings = getattr(audit, kind)
                log[kind] = {"count": findings.count, "listed": log[kind]["listed"]}
        return out


class _LogState:
    """The running audit of one log while the stream is read."""

    def __init__(self, audit: LogAudit) -> None:
        self.audit = audit
        self._seen = bytearray(audit.head // 8 + 1)
        self._seen_beyond: set[int] = set()  # ids written while the audit ran
        self._highest = 0
        self.first_genuine = 0

    def seen(self, notification: int) -> bool:
        if notification <= self.audit.head:
            return bool(self._seen[notification >> 3] & (1 << (notification & 7)))
        return notification in self._seen_beyond

    def _mark(self, notification: int) -> None:
        if notification <= self.audit.head:
            self._seen[notification >> 3] |= 1 << (notification & 7)
        else:
            self._seen_beyond.add(notification)

    def observe(self, message: StoredMessage, claimed: int, stored: Notification | None) -> None:
        audit = self.audit
        verdict = judge(message.data, audit.log, claimed, stored)
        if verdict is not Verdict.GENUINE:
            extra = Extra(message.seq, claimed, verdict.value, _reason(stored, verdict))
            audit.extra.add(message.seq, extra)
            return
        self.first_genuine = self.first_genuine or claimed
        if self.seen(claimed):
            audit.duplicated.add(claimed, Placed(claimed, message.seq))
            return
        audit.in_stream += 1
        self._mark(claimed)
        if claimed > self._highest:
            self._highest = claimed
        elif REPUBLISHED_HEADER in message.headers:
            audit.republished.add(claimed, Placed(claimed, message.seq))
        else:
            audit.out_of_order.add(claimed, Placed(claimed, message.seq))


def _reason(stored: Notification | None, verdict: Verdict) -> str:
    if stored is None:
        return "the log has no such notification"
    if verdict is Verdict.FOREIGN:
        return "a relay's message of another event than the stored one"
    return "not the relay's message of the stored event"


async def audit_stream(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    logs: Sequence[PostgresEventLog],
    positions: PostgresRelayPositions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> StreamAudit:
    """Audits ``stream`` against the store for each of ``logs`` (see the module).

    Args:
        nc: a connected NATS client.
        js: its JetStream context.
        stream: the stream the relays publish to.
        logs: readers of the logs to audit (one connection may serve them all).
        positions: the relay positions (and the unrouted and oversized records).
        progress: called with (messages read, messages in the stream) after each batch.

    Raises:
        BrokerUnavailable: JetStream did not answer.
        PublishError: the stream does not exist.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    started = time.monotonic()
    states: dict[str, _LogState] = {}
    skipped: dict[str, tuple[set[int], set[int]]] = {}
    for log in logs:
        # The position first: everything up to it was acknowledged before the stream is read.
        position = await positions.get(log.log)
        states[log.log] = _LogState(LogAudit(log.log, await log.head(), position))
        skipped[log.log] = await positions.skipped(log.log)
    readers = {log.log: log for log in logs}
    bounds = await stream_bounds(js, stream)
    result = StreamAudit(stream, bounds.first, bounds.last)
    async for batch in scan(nc, js, stream, start=max(bounds.first, 1), end=bounds.last):
        result.messages += len(batch)
        claims: dict[str, list[tuple[StoredMessage, int]]] = {}
        for message in batch:
            log_name, _, _ = (message.msg_id or "").rpartition(":")
            if log_name not in states:
                result.other += 1
                continue
            claimed = notification_of(message.msg_id, log_name)
            if claimed is None:
                reason = f"malformed message id {message.msg_id!r}"
                extra = Extra(message.seq, 0, "forged", reason)
                states[log_name].audit.extra.add(message.seq, extra)
                continue
            claims.setdefault(log_name, []).append((message, claimed))
        for log_name, items in claims.items():
            stored = await _stored(readers[log_name], [claimed for _, claimed in items])
            state = states[log_name]
            for message, claimed in items:
                state.observe(message, claimed, stored.get(claimed))
        if progress is not None:
            progress(result.messages, bounds.messages)
    for log in logs:
        state = states[log.log]
        unrouted, oversized = skipped[log.log]
        await _find_missing(log, state, unrouted | oversized, retention=bounds.first > 1)
        audit = state.audit
        audit.unrouted = len(unrouted)
        audit.oversized = sorted(n for n in oversized if not state.seen(n))
        result.logs.append(audit)
    result.seconds = time.monotonic() - started
    return result


async def _stored(log: PostgresEventLog, ids: list[int]) -> dict[int, Notification]:
    """The stored events with these ids: a range read when they are dense (they usually are)."""
    low, high = min(ids), max(ids)
    if high - low < 4 * len(ids):
        return {n.id: n for n in await log.between(low - 1, high)}
    return await log.fetch(sorted(set(ids)))


async def _find_missing(
    log: PostgresEventLog, state: _LogState, skipped: set[int], *, retention: bool
) -> None:
    audit = state.audit
    after = 0
    if retention:
        # The stream no longer starts at sequence 1: what came before its first message of
        # the log may have expired. Check from that message on.
        if not state.first_genuine:
            audit.not_checked_below = audit.relay_position + 1
            return
        after = state.first_genuine - 1
        audit.not_checked_below = state.first_genuine
    while True:
        ids = await log.ids(after, audit.relay_position, _ID_PAGE)
        if not ids:
            return
        audit.missing.extend(n for n in ids if not state.seen(n) and n not in skipped)
        after = ids[-1]
