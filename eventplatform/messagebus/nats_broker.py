"""NATS JetStream adapter: connection, the stream, pipelined acknowledged publishing.

Connecting is in the caller's hands: :meth:`NatsBroker.connect` makes one bounded, cancellable
try, and :meth:`NatsBroker.connect_until` retries it until it succeeds or ``stop`` is set, so a
process started while NATS is down, or with a wrong password, still stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from eventplatform.backoff import Stopped, backoff, sleep_or_stop, until_stopped
from eventplatform.errors import BrokerUnavailable, PublishError
from eventplatform.messagebus.nats_options import NatsConnectOptions, nats_options
from eventplatform.redaction import redact
from eventplatform.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message ready to publish.

    Attributes:
        subject: NATS subject.
        body: payload bytes.
        msg_id: ``Nats-Msg-Id``, the broker-side de-duplication key.
        headers: further headers (e.g. ``traceparent``).
    """

    subject: str
    body: bytes
    msg_id: str
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The JetStream stream the platform publishes to.

    Attributes:
        name: stream name.
        subjects: subjects it captures, e.g. ``["events.>"]``.
        duplicate_window: seconds within which a repeated ``Nats-Msg-Id`` is dropped.
        replicas: 1 on one server, 3 on a cluster.
        max_age: seconds a message is kept (0: for ever).
        max_bytes: bytes the stream keeps, the oldest messages dropped first (-1: no limit).
    """

    name: str
    subjects: tuple[str, ...]
    duplicate_window: float = 120.0
    replicas: int = 1
    max_age: float = 0.0
    max_bytes: int = -1


class NatsBroker:
    """One NATS connection and its JetStream context.

    Args:
        servers: server URLs (several for a cluster).
        name: client name shown in the server's monitoring.
        connect_timeout: seconds per connection attempt.
        max_in_flight: publishes awaiting an ack at once (nats-py's pending semaphore).
        options: credentials and TLS (:func:`~eventplatform.messagebus.nats_options.nats_options`).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str = "eventplatform",
        connect_timeout: float = 2.0,
        max_in_flight: int = 4096,
        options: NatsConnectOptions | None = None,
    ) -> None:
        self._servers = list(servers)
        self._name = name
        self._connect_timeout = connect_timeout
        self._max_in_flight = max_in_flight
        self._options = options or NatsConnectOptions()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self._failing = False
        self._connecting = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, name: str, max_in_flight: int | None = None
    ) -> NatsBroker:
        """The broker every platform process uses: servers, credentials and TLS from settings.

        Args:
            settings: platform settings (``APP_NATS_*``).
            name: client name shown in the server's monitoring (e.g. ``relay-products``).
            max_in_flight: publishes awaiting an ack at once (default: nats-py's own bound).

        Raises:
            ConfigurationError: a credential or TLS file is unusable.
        """
        return cls(
            settings.nats_servers,
            name=name,
            max_in_flight=max_in_flight or 4096,
            options=nats_options(settings),
        )

    @property
    def servers(self) -> str:
        """The server URLs, credentials masked, for messages."""
        return redact(", ".join(self._servers))

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and the client has not been closed since (it may
        be reconnecting in the background)."""
        return self._nc is not None and not self._nc.is_closed

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (after :meth:`connect`)."""
        if self._js is None:
            msg = "NatsBroker is not connected: call connect() first"
            raise BrokerUnavailable(msg)
        return self._js

    @property
    def nc(self) -> Client:
        """The core NATS client (after :meth:`connect`)."""
        if self._nc is None:
            msg = "NatsBroker is not connected: call connect() first"
            raise BrokerUnavailable(msg)
        return self._nc

    async def connect(self) -> None:
        """Connects, trying every server once; keeps reconnecting in the background after.

        One bounded try: a server that refuses TCP fails it at once, a wrong password or a
        TLS failure within about ``connect_timeout`` per server. It can be cancelled at any
        point (nothing is left open). Retry it with :meth:`connect_until`.

        Raises:
            BrokerUnavailable: no server accepted the connection; the message says why
                (refused, ``Authorization Violation``, TLS, ...) with credentials masked.
        """
        await probe(self._servers, timeout=self._connect_timeout)
        nc = Client()
        self._connecting = True
        try:
            async with asyncio.timeout(self._connect_timeout * len(self._servers) + 1.0):
                await nc.connect(**self._connect_kwargs())
        except (TimeoutError, nats.errors.Error, OSError, ValueError) as e:
            # nats-py retries inside connect() until our timeout: its last error says why.
            cause = nc.last_error or e
            await _close_quietly(nc)
            msg = f"cannot connect to NATS at {self.servers}: {cause!r}"
            raise BrokerUnavailable(redact(msg)) from e
        except BaseException:  # cancelled: leave no half-open client behind
            await _close_quietly(nc)
            raise
        finally:
            self._connecting = False
        self._nc = nc
        self._failing = False
        self._closing = False
        self._js = nc.jetstream(publish_async_max_pending=self._max_in_flight)

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "servers": self._servers,
            "name": self._name,
            "connect_timeout": self._connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            **self._options.as_kwargs(),
        }

    async def connect_until(
        self, stop: asyncio.Event, *, what: str = "NATS client", log: logging.Logger = logger
    ) -> bool:
        """Connects, retrying with capped back-off and jitter, until connected or ``stop``.

        The first failure of the episode is logged as a warning naming ``what`` (on ``log``,
        the caller's logger), the recovery at info; a set ``stop`` ends the wait at once, even
        in the middle of an attempt.

        Returns:
            True when connected, False when ``stop`` was set first.
        """
        failures = 0
        while not stop.is_set():
            try:
                await until_stopped(stop, self.connect())
            except Stopped:
                return False
            except BrokerUnavailable as e:
                failures += 1
                if failures == 1:
                    log.warning("%s cannot reach NATS: %s; retrying", what, e)
                await sleep_or_stop(stop, backoff(failures, 0.2, 2.0))
                continue
            if failures:
                log.info("%s reached NATS after %d retries", what, failures)
            return True
        return False

    async def close(self) -> None:
        """Flushes and closes the connection (idempotent).

        Not ``drain()``: a pending pull request would hold it until its timeout, and
        everything the platform publishes is acknowledged before it counts anyway.
        """
        if self._nc is not None and not self._nc.is_closed:
            self._closing = True
            if self._nc.is_connected:  # a flush to a server that is away only delays the stop
                try:
                    await self._nc.flush(timeout=1)
                except (TimeoutError, nats.errors.Error):
                    logger.debug("NATS flush before close failed", exc_info=True)
            await self._nc.close()
        self._nc = None
        self._js = None

    async def __aenter__(self) -> NatsBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure_stream(self, spec: StreamSpec) -> api.StreamInfo:
        """Creates the stream, or checks and updates the existing one to ``spec``.

        Raises:
            BrokerUnavailable: JetStream did not answer.
            PublishError: the server refused the configuration.
        """
        config = api.StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=spec.replicas,
            duplicate_window=spec.duplicate_window,
            max_age=spec.max_age,
            max_bytes=spec.max_bytes,
            discard=api.DiscardPolicy.OLD,
        )
        try:
            try:
                info = await self.js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                return await self.js.add_stream(config)
            current = info.config
            limits = (current.max_age or 0.0, current.max_bytes or -1)
            if limits != (spec.max_age, spec.max_bytes):
                logger.warning(
                    "stream %s: retention changes from max_age=%gs max_bytes=%d to "
                    "max_age=%gs max_bytes=%d (older messages are dropped now)",
                    spec.name,
                    *limits,
                    spec.max_age,
                    spec.max_bytes,
                )
            if (
                sorted(current.subjects or []) != sorted(spec.subjects)
                or current.duplicate_window != spec.duplicate_window
                or limits != (spec.max_age, spec.max_bytes)
            ):
                return await self.js.update_stream(config)
            return info
        except nats.js.errors.APIError as e:
            msg = f"JetStream refused stream {spec.name!r}: {e}"
            raise PublishError(msg) from e
        except (TimeoutError, nats.errors.Error) as e:
            msg = f"JetStream unavailable while ensuring stream {spec.name!r}: {e!r}"
            raise BrokerUnavailable(msg) from e

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, timeout: float = 10.0
    ) -> list[api.PubAck]:
        """Publishes messages pipelined and waits until every one is acknowledged.

        Publishes go out back to back on one connection (so the stream stores them in this
        order); the acks are awaited together. Either all are acknowledged, or this raises
        and the caller must treat the whole batch as unpublished (JetStream de-duplicates
        the ones that did land when they are sent again).

        Args:
            messages: in the order they must be stored.
            timeout: seconds to wait for all acks.

        Returns:
            The acks, in order (``duplicate`` is true for repeats the broker dropped).

        Raises:
            PublishError: the broker refused a message.
            BrokerUnavailable: not every ack arrived in time, or the connection failed.
        """
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for m in messages:
                headers = {"Nats-Msg-Id": m.msg_id}
                if m.headers:
                    headers.update(m.headers)
                futures.append(await self.js.publish_async(m.subject, m.body, headers=headers))
            async with asyncio.timeout(timeout):
                return list(await asyncio.gather(*futures))
        except nats.js.errors.APIError as e:
            msg = f"JetStream refused a message: {e}"
            raise PublishError(msg) from e
        except (TimeoutError, nats.errors.Error, OSError) as e:
            msg = f"JetStream did not acknowledge {len(messages)} messages: {e!r}"
            raise BrokerUnavailable(msg) from e
        finally:
            # Cancel what is still pending, or nats-py's in-flight semaphore leaks a slot
            # per lost ack and publishing eventually stalls for good.
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved: no "never retrieved" warnings

    async def _on_error(self, e: Exception) -> None:
        # nats-py reports every failed reconnect attempt (twice a second while a server is
        # down): log the first of an episode, the rest at debug, until a reconnect ends it.
        # While connect() runs, its caller reports the outcome: nothing to log here.
        if self._failing or self._connecting:
            logger.debug("NATS error: %r", e)
            return
        self._failing = True
        logger.warning("NATS error: %r (further errors until reconnected are not logged)", e)

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._failing:
            self._failing = True
            logger.warning("NATS disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        self._failing = False
        url = self._nc.connected_url if self._nc else None
        # host:port only: the parsed URL's repr carries the user info (password included).
        where = f"{url.hostname}:{url.port}" if url else "?"
        logger.info("NATS reconnected to %s", where)


_CONSUMER_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def consumer_name(name: str) -> str:
    """``name`` made a valid durable consumer name (NATS forbids dots, spaces, wildcards)."""
    return _CONSUMER_NAME_UNSAFE.sub("_", name)


def is_consumer_name(name: str) -> bool:
    """Whether ``name`` is already a valid durable consumer name."""
    return _CONSUMER_NAME_UNSAFE.search(name) is None


def stream_spec(settings: Settings) -> StreamSpec:
    """The stream described by platform settings (``APP_STREAM`` and friends)."""
    return StreamSpec(
        name=settings.stream,
        subjects=(f"{settings.subject_prefix}.>",),
        duplicate_window=settings.duplicate_window,
        replicas=settings.stream_replicas,
        max_age=settings.stream_max_age,
        max_bytes=settings.stream_max_bytes,
    )


async def probe(servers: Sequence[str], timeout: float = 1.0) -> None:
    """Raises unless some server accepts a TCP connection.

    nats-py retries a refused *first* connection forever inside ``connect()`` (with
    ``max_reconnect_attempts=-1``) and does not honour cancellation there, so a process started
    while NATS is down could never be stopped. Probing first keeps the wait in our hands.

    Raises:
        BrokerUnavailable: no server answered.
    """
    for url in servers:
        parsed = urlsplit(url)
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(
                    parsed.hostname or "127.0.0.1", parsed.port or 4222
                )
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    msg = f"no NATS server accepts connections at {', '.join(servers)}"
    raise BrokerUnavailable(redact(msg))


async def _close_quietly(nc: Client) -> None:
    """Closes a client that may be half connected; never raises (but lets a cancel through)."""
    try:
        await nc.close()
    except (nats.errors.Error, OSError, TimeoutError):
        logger.debug("closing a NATS client that failed to connect", exc_info=True)
