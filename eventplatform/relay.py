"""The relay: follows a log's notifications and publishes each event to JetStream, in order.

Invariant 2 lives here: the position is recorded only after the broker acknowledged every
message up to it. A crash in between republishes the batch; JetStream's duplicate window
(``Nats-Msg-Id = "<log>:<notification id>"``) and the consumers' tracking absorb the repeat.
No database transaction is open while the relay waits on the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventplatform import cloudevents
from eventplatform.errors import BrokerUnavailable, EventPlatformError
from eventplatform.event_log import Notification, PostgresEventLog
from eventplatform.nats_broker import NatsBroker, OutgoingMessage
from eventplatform.positions import PostgresRelayPositions
from eventplatform.retry import backoff, sleep_or_stop
from eventplatform.routing import TopicMapper

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """How the relay batches and waits.

    Attributes:
        batch_size: notifications read and published per batch.
        poll_interval: seconds between re-polls when no NOTIFY arrives.
        ack_timeout: seconds to wait for a batch's acks.
        retry_initial: first back-off after a failure, in seconds.
        retry_max: the back-off's cap, in seconds.
    """

    batch_size: int = 1000
    poll_interval: float = 1.0
    ack_timeout: float = 10.0
    retry_initial: float = 0.1
    retry_max: float = 5.0


@dataclass(frozen=True, slots=True)
class RelayedBatch:
    """What one batch did, for observers (tests, the demo, metrics)."""

    first: int
    last: int
    messages: Sequence[OutgoingMessage]
    duplicates: int


class Relay:
    """Publishes a log's events to JetStream and records its position after the acks.

    Args:
        log: reader of the log's notifications.
        broker: connected NATS broker.
        positions: the relay-position store.
        mapper: topic → subject.
        config: batching and waiting.
        on_batch: called after each recorded batch (observers: demo, metrics, tests).
    """

    def __init__(
        self,
        *,
        log: PostgresEventLog,
        broker: NatsBroker,
        positions: PostgresRelayPositions,
        mapper: TopicMapper,
        config: RelayConfig | None = None,
        on_batch: Callable[[RelayedBatch], None] | None = None,
    ) -> None:
        self._log = log
        self._broker = broker
        self._positions = positions
        self._mapper = mapper
        self._config = config or RelayConfig()
        self._on_batch = on_batch
        self.position = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until ``stop`` is set, then returns after the current batch is recorded.

        A NATS failure is retried with capped exponential back-off and jitter (nats-py
        reconnects underneath); the position never moves past an unacknowledged event.

        Raises:
            StoreUnavailable: the PostgreSQL connection is gone; the caller reconnects.
        """
        await self._log.listen()
        self.position = await self._positions.get(self._log.log)
        logger.info("relay of %r starts after position %d", self._log.log, self.position)
        failures = 0
        while not stop.is_set():
            try:
                batch = await self.relay_once()
            except BrokerUnavailable as e:
                failures += 1
                delay = backoff(failures, self._config.retry_initial, self._config.retry_max)
                if failures == 1:
                    logger.warning("relay of %r paused: %s; retrying", self._log.log, e)
                await sleep_or_stop(stop, delay)
                continue
            if failures:
                logger.info("relay of %r resumed after %d retries", self._log.log, failures)
                failures = 0
            if batch is None:
                await self._wait_for_news(stop)
            elif self._on_batch is not None:
                self._on_batch(batch)

    async def relay_once(self) -> RelayedBatch | None:
        """Publishes the next batch after the current position and records it.

        Returns:
            The batch, or None when the log had nothing new.
        """
        notifications = await self._log.read(self.position, self._config.batch_size)
        if not notifications:
            return None
        messages = [self._message(n) for n in notifications]
        acks = await self._broker.publish_batch(messages, timeout=self._config.ack_timeout)
        last = notifications[-1].id
        await self._positions.record(self._log.log, last)
        self.position = last
        return RelayedBatch(
            first=notifications[0].id,
            last=last,
            messages=messages,
            duplicates=sum(1 for a in acks if a.duplicate),
        )

    def _message(self, n: Notification) -> OutgoingMessage:
        subject = self._mapper(n.topic)
        if subject is None:
            msg = f"topic {n.topic!r} of {self._log.log}:{n.id} maps to no subject"
            raise EventPlatformError(msg)
        body = cloudevents.encode(
            log=self._log.log,
            notification_id=n.id,
            aggregate_id=n.originator_id,
            version=n.originator_version,
            topic=n.topic,
            state=n.state,
        )
        return OutgoingMessage(
            subject=subject, body=body, msg_id=cloudevents.message_id(self._log.log, n.id)
        )

    async def _wait_for_news(self, stop: asyncio.Event) -> None:
        # Not raced against ``stop``: cancelling a pending notifies() can leave the
        # LISTEN connection mid-protocol. Shutdown waits at most one poll interval.
        if not stop.is_set():
            await self._log.wait(self._config.poll_interval)
