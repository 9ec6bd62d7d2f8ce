"""Repairing a stream that lacks events: republish them at its end, under the relay's fencing.

``eventplatform audit --repair`` hands the missing events found by :mod:`.audit` (and the
oversized ones that fit the server by now) to :func:`republish`, which

1. takes the log's relay lease (:meth:`~eventplatform.leases.leadership.PostgresLeases.
   take_over`): the leading relay is deposed as if its lease had expired, and then waits one
   lease ttl, by which time that relay has noticed and stopped publishing; whatever it still
   had in flight is fenced like anything else;
2. publishes the events in notification order at the stream's end, fenced exactly as the relay
   fences (the first message expects the stream's last sequence, each next one its
   predecessor), each marked with :data:`~.fencing.REPUBLISHED_HEADER`. A duplicate ack is
   checked like the relay checks it: the event already there is fine, someone else's message
   under its id means JetStream's duplicate window still holds that id (run again later);
3. releases the lease: a standing-by relay takes over within its poll interval.

Republished events come after later ones. Idempotent handlers de-duplicate by event id and
simply apply them; a projection skips positions at or below the one it tracks, so
:func:`rebuild_targets` names, per projection that had passed them, the aggregates to rebuild
(``eventplatform rebuild <projection> --aggregate <id>``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client
from nats.js import JetStreamContext
from psycopg import sql

from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.leases.leadership import (
    Lease,
    LeaseLost,
    PostgresLeases,
    new_holder_id,
    relay_lease,
)
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.nats_broker import OutgoingMessage
from eventplatform.relay.event_log import Notification, PostgresEventLog
from eventplatform.relay.fencing import (
    EXPECTED_LAST_MSG_ID,
    REPUBLISHED_HEADER,
    FencedPublisher,
    Refused,
    fence_headers,
    is_fence_error,
    wire_size,
)
from eventplatform.relay.genuine import carries
from eventplatform.relay.positions import PostgresRelayPositions
from eventplatform.relay.routing import TopicMapper
from eventplatform.relay.stream_reader import get_message, stream_bounds
from eventplatform.store.postgres import translate
from eventplatform.store.schema import TRACKING

logger = logging.getLogger(__name__)

#: Messages published per fenced batch.
_CHUNK = 500
#: Fence refusals in a row before the repair gives up (something else keeps publishing).
_MAX_FENCED = 10
#: The value of :data:`~.fencing.REPUBLISHED_HEADER` on what the repair publishes.
_MARK = "audit --repair"


@dataclass(slots=True)
class RepairReport:
    """What :func:`republish` did for one log.

    Attributes:
        log: the log.
        republished: notification ids published again, in order.
        present: ids JetStream already held (the relay, or a previous repair, was faster).
        held: ``(notification, seq)``: JetStream dropped the event as a duplicate of the
            message at ``seq``, which is not it; its id is still in the duplicate window.
        too_large: ids still larger than the server's ``max_payload``.
        unrouted: ids whose topic maps to no subject.
    """

    log: str
    republished: list[int] = field(default_factory=list)
    present: list[int] = field(default_factory=list)
    held: list[tuple[int, int]] = field(default_factory=list)
    too_large: list[int] = field(default_factory=list)
    unrouted: list[int] = field(default_factory=list)


async def republish(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    log: PostgresEventLog,
    ids: Sequence[int],
    *,
    leases: PostgresLeases,
    positions: PostgresRelayPositions,
    mapper: TopicMapper,
    lease_ttl: float,
    ack_timeout: float = 10.0,
) -> RepairReport:
    """Republishes the events ``ids`` of ``log`` at the end of ``stream`` (see the module).

    Args:
        nc: a connected NATS client.
        js: its JetStream context.
        stream: the stream the relay publishes to.
        log: the log.
        ids: notification ids to republish (any order; absent ones are left out).
        leases: the lease table (its connection is used for nothing else meanwhile).
        positions: the relay positions; oversized records of republished events are removed.
        mapper: the relay's topic mapper.
        lease_ttl: the relay's lease ttl (``APP_RELAY_LEASE_TTL``).
        ack_timeout: seconds to wait for a batch's acks.

    Raises:
        LeaseLost: a relay took the lease back meanwhile.
        PublishError: JetStream refused a message, or kept fencing the repair off.
        BrokerUnavailable: JetStream did not answer.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    report = RepairReport(log.log)
    found = await log.fetch(sorted(set(ids)))
    events = [found[n] for n in sorted(found)]
    if not events:
        return report
    name = relay_lease(log.log)
    # Held with a ttl of its own, longer than the relay's: a standby relay must not take the
    # lease back between two renewals of a repair slowed down by a loaded machine.
    hold = max(10 * lease_ttl, 30.0)
    lease = await leases.take_over(name, f"audit-repair:{new_holder_id()}", hold)
    logger.warning(
        "audit took the relay lease of %r (token %d) to republish %d event(s); the relay"
        " resumes when it is released",
        log.log,
        lease.token,
        len(events),
    )
    try:
        await asyncio.sleep(lease_ttl)  # the deposed relay stops trusting its lease by then
        sendable = _sendable(log.log, events, mapper, int(nc.max_payload), report)
        await _publish(
            nc,
            js,
            stream,
            log.log,
            sendable,
            mapper,
            report,
            ack_timeout,
            _Renewal(leases, lease, hold),
        )
    finally:
        await leases.release(lease)
    if report.republished:
        await positions.forget_oversized(log.log, report.republished)
    return report


@dataclass(frozen=True, slots=True)
class _Renewal:
    leases: PostgresLeases
    lease: Lease
    ttl: float

    async def __call__(self) -> None:
        if not await self.leases.renew(self.lease, self.ttl):
            msg = f"the lease {self.lease.name!r} was taken back during the repair"
            raise LeaseLost(msg)


def _sendable(
    log: str,
    events: list[Notification],
    mapper: TopicMapper,
    max_payload: int,
    report: RepairReport,
) -> list[Notification]:
    """The events that can be published; the others go to the report."""
    sendable = []
    for n in events:
        if mapper(n.topic) is None:
            report.unrouted.append(n.id)
            continue
        msg_id = cloudevents.message_id(log, n.id)
        # The largest headers it can get: a predecessor's message id as its fence.
        headers = {EXPECTED_LAST_MSG_ID: msg_id, REPUBLISHED_HEADER: _MARK}
        if wire_size(_body(log, n), msg_id, headers) > max_payload:
            report.too_large.append(n.id)
            continue
        sendable.append(n)
    return sendable


async def _publish(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    log: str,
    events: list[Notification],
    mapper: TopicMapper,
    report: RepairReport,
    ack_timeout: float,
    renew: _Renewal,
) -> None:
    """Publishes ``events`` in order at the stream's end, fenced; re-reads the end when fenced."""
    publisher = FencedPublisher(nc)
    index = 0
    fenced = 0
    while index < len(events):
        await renew()
        last = (await stream_bounds(js, stream)).last
        chunk = events[index : index + _CHUNK]
        messages = []
        previous: str | None = None
        for n in chunk:
            msg_id = cloudevents.message_id(log, n.id)
            headers = {**fence_headers(previous, last), REPUBLISHED_HEADER: _MARK}
            subject = mapper(n.topic)
            assert subject is not None  # _sendable left the unrouted out
            messages.append(OutgoingMessage(subject, _body(log, n), msg_id, headers))
            previous = msg_id
        refused: Refused | None = None
        try:
            acks = await publisher.publish_batch(messages, timeout=ack_timeout)
        except Refused as e:
            acks, refused = e.acked, e
        for event, ack in zip(chunk, acks, strict=False):
            if not ack.duplicate:
                report.republished.append(event.id)
                continue
            stored = await get_message(js, stream, int(ack.seq))
            if stored is not None and carries(stored.data, log, event):
                report.present.append(event.id)
            else:
                report.held.append((event.id, int(ack.seq)))
        index += len(acks)
        if refused is None:
            fenced = 0
            continue
        if not is_fence_error(refused):
            raise refused
        fenced += 1
        if fenced > _MAX_FENCED:
            msg = (
                f"the repair of {log!r} was fenced off {fenced} times in a row: something"
                " else keeps publishing to the stream"
            )
            raise PublishError(msg) from refused


def _body(log: str, n: Notification) -> bytes:
    return cloudevents.encode(
        log=log,
        notification_id=n.id,
        aggregate_id=n.originator_id,
        version=n.originator_version,
        topic=n.topic,
        state=n.state,
    )


@dataclass(frozen=True, slots=True)
class RebuildTarget:
    """A projection that had passed republished or out-of-order events, and what to rebuild.

    Attributes:
        projection: the projection's name.
        position: its tracked position in the log.
        aggregates: ids of the aggregates whose events it skipped, sorted.
    """

    projection: str
    position: int
    aggregates: list[str]


async def rebuild_targets(
    conn: psycopg.AsyncConnection[Any], log: PostgresEventLog, ids: Sequence[int]
) -> list[RebuildTarget]:
    """Which projections skip the events ``ids`` (they track a position at or above them).

    Args:
        conn: an autocommit connection.
        log: the log the events belong to.
        ids: events that reached the stream after later ones.

    Raises:
        StoreUnavailable: PostgreSQL could not be reached.
    """
    if not ids:
        return []
    events = await log.fetch(sorted(set(ids)))
    query = sql.SQL("SELECT projection, position FROM {} WHERE log = %s ORDER BY 1").format(
        sql.Identifier(TRACKING)
    )
    try:
        cur = await conn.execute(query, (log.log,))
        rows = await cur.fetchall()
    except psycopg.OperationalError as e:
        raise translate(e, f"reading the projections of {log.log!r}") from e
    targets = []
    for projection, position in rows:
        aggregates = sorted(
            {str(n.originator_id) for n in events.values() if n.id <= int(position)}
        )
        if aggregates:
            targets.append(RebuildTarget(str(projection), int(position), aggregates))
    return targets


async def delete_messages(js: JetStreamContext, stream: str, seqs: Sequence[int]) -> int:
    """Deletes the messages at ``seqs`` from ``stream``; returns how many were there.

    Raises:
        BrokerUnavailable: JetStream did not answer.
    """
    deleted = 0
    for seq in seqs:
        try:
            if await js.delete_msg(stream, seq):
                deleted += 1
        except nats.js.errors.NotFoundError:
            continue
        except (TimeoutError, nats.errors.Error, OSError) as e:
            msg = f"JetStream unavailable while deleting {stream!r} seq {seq}: {e!r}"
            raise BrokerUnavailable(msg) from e
    return deleted
