"""Leadership: one lease row per name (a relay's log, a projection), with a fencing token.

Why a lease and not a session advisory lock: a transaction-mode connection pooler (PgBouncer)
hands each transaction to any server session, so a session lock is neither held nor released
where the client thinks. A lease row is plain data, read and written by single autocommit
statements, and works through any pooler.

How it works:

* **Acquire.** A standby tries, every ``poll`` seconds, one ``INSERT ... ON CONFLICT DO UPDATE``
  that succeeds only when the row is absent, expired (by the *database's* clock, the one clock
  every contender shares) or already held by the same holder. Each acquisition bumps the
  ``token``: the fencing token.
* **Renew.** The leader renews every ``renew_interval`` seconds, conditional on its token. It
  counts its lease valid until ``ttl`` seconds after it *sent* the last successful renewal
  (measured on its own monotonic clock), so it stops trusting the lease no later than the
  database expires it, whatever the network did.
* **Fence.** Whatever the leader writes is conditional on its token (the relay's position, see
  :mod:`eventplatform.relay.positions`), and what it publishes carries JetStream's expected-last
  headers (see :mod:`eventplatform.relay.fencing`). A leader that hung past its lease and wakes up
  late can neither move the position nor append out of order.

A standby takes over at most ``ttl + poll`` seconds after the leader died, hung or lost its
database (defaults 3 s + 1 s). A leader that stops cleanly releases the lease at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from eventplatform.backoff import sleep_or_stop
from eventplatform.errors import ConfigurationError, EventPlatformError, StoreUnavailable
from eventplatform.store.postgres import like_prefix, translate
from eventplatform.store.schema import LEASES

logger = logging.getLogger(__name__)


class LeaseLost(EventPlatformError):
    """This process no longer holds (or can no longer trust) its lease; whatever it was about to
    commit under the lease's token is refused."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Timing of the lease.

    Attributes:
        ttl: seconds a lease lives without renewal; bounds the takeover time (with ``poll``).
        renew_interval: seconds between renewals (default ``ttl / 3``).
        poll: seconds between a standby's attempts (default ``ttl / 3``).
    """

    ttl: float = 3.0
    renew_interval: float | None = None
    poll: float | None = None

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            msg = f"lease ttl must be > 0 seconds, got {self.ttl}"
            raise ConfigurationError(msg)
        if self.renew_interval is not None and not 0 < self.renew_interval < self.ttl:
            msg = (
                f"lease renew_interval must be within (0, ttl={self.ttl}),"
                f" got {self.renew_interval}"
            )
            raise ConfigurationError(msg)
        if self.poll is not None and self.poll <= 0:
            msg = f"lease poll must be > 0 seconds, got {self.poll}"
            raise ConfigurationError(msg)

    @property
    def renew_every(self) -> float:
        """Seconds between renewals."""
        return self.renew_interval if self.renew_interval is not None else self.ttl / 3

    @property
    def poll_every(self) -> float:
        """Seconds between a standby's attempts to acquire."""
        return self.poll if self.poll is not None else self.ttl / 3

    @property
    def takeover_bound(self) -> float:
        """The longest a standby waits after the leader is gone: ``ttl + poll``."""
        return self.ttl + self.poll_every


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease.

    Attributes:
        name: what it is for (:func:`relay_lease` or :func:`projection_lease`).
        holder: who holds it (``host:pid:random``).
        token: the fencing token; grows with every acquisition.
        acquired_at: when (database clock) this holder acquired it.
    """

    name: str
    holder: str
    token: int
    acquired_at: datetime


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a lease, as seen in the table (for standbys and status)."""

    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime
    expired: bool


def relay_lease(log: str) -> str:
    """The name of the lease whose holder relays ``log``."""
    return f"relay:{log}"


def projection_lease(projection: str) -> str:
    """The name of the lease whose holder runs the worker of ``projection``."""
    return f"projection:{projection}"


def new_holder_id() -> str:
    """A holder id unique to this process and call: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseStore(Protocol):
    """Where leases live: a Protocol so the leadership logic is tested against a fake."""

    async def try_acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease if free, expired or ``holder``'s own; None otherwise."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extends ``lease``; False when its token is no longer current."""
        ...

    async def release(self, lease: Lease) -> None:
        """Expires ``lease`` now."""
        ...

    async def current(self, name: str) -> LeaseHolder | None:
        """Who holds (or last held) the lease ``name``."""
        ...


_T = sql.Identifier(LEASES)


class PostgresLeases:
    """The lease table, each operation one autocommit statement (pooler-safe).

    Args:
        conn: an autocommit async connection owned by the caller.
    """

    _acquire = sql.SQL(
        "INSERT INTO {t} AS l (name, holder, token, acquired_at, expires_at)"
        " VALUES (%(name)s, %(holder)s, 1, now(), now() + make_interval(secs => %(ttl)s))"
        " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, token = l.token + 1,"
        " acquired_at = now(), expires_at = EXCLUDED.expires_at"
        " WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder"
        " RETURNING token, acquired_at"
    ).format(t=_T)
    _take_over = sql.SQL(
        "INSERT INTO {t} AS l (name, holder, token, acquired_at, expires_at)"
        " VALUES (%(name)s, %(holder)s, 1, now(), now() + make_interval(secs => %(ttl)s))"
        " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, token = l.token + 1,"
        " acquired_at = now(), expires_at = EXCLUDED.expires_at"
        " RETURNING token, acquired_at"
    ).format(t=_T)
    _renew = sql.SQL(
        "UPDATE {t} SET expires_at = now() + make_interval(secs => %(ttl)s)"
        " WHERE name = %(name)s AND token = %(token)s AND holder = %(holder)s"
    ).format(t=_T)
    _release = sql.SQL(
        "UPDATE {t} SET expires_at = now() WHERE name = %(name)s AND token = %(token)s"
    ).format(t=_T)
    _current = sql.SQL(
        "SELECT holder, token, acquired_at, expires_at, expires_at <= now() FROM {t}"
        " WHERE name = %s"
    ).format(t=_T)

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def try_acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease if it is free, expired or already ``holder``'s (new token each time).

        Returns:
            The lease, or None while another holder's lease is live.
        """
        params = {"name": name, "holder": holder, "ttl": ttl}
        try:
            cur = await self._conn.execute(self._acquire, params)
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"acquiring the lease {name!r}") from e
        if row is None:
            return None
        return Lease(name=name, holder=holder, token=int(row[0]), acquired_at=row[1])

    async def take_over(self, name: str, holder: str, ttl: float) -> Lease:
        """Takes the lease whoever holds it (new token): for short operator tasks.

        The holder it is taken from is deposed exactly as if its lease had expired: its
        next renewal fails, and whatever it commits under its old token is refused. Used by
        ``eventplatform audit --repair`` to publish under the relay's fencing.
        """
        params = {"name": name, "holder": holder, "ttl": ttl}
        try:
            cur = await self._conn.execute(self._take_over, params)
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"taking over the lease {name!r}") from e
        assert row is not None  # an upsert without a condition always returns its row
        return Lease(name=name, holder=holder, token=int(row[0]), acquired_at=row[1])

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extends ``lease`` by ``ttl`` seconds from now.

        Returns:
            False when the token is no longer current: someone else took the lease over.
        """
        params = {"name": lease.name, "holder": lease.holder, "token": lease.token, "ttl": ttl}
        try:
            cur = await self._conn.execute(self._renew, params)
        except psycopg.OperationalError as e:
            raise translate(e, f"renewing the lease {lease.name!r}") from e
        return cur.rowcount == 1

    async def release(self, lease: Lease) -> None:
        """Expires ``lease`` now so a standby takes over without waiting (no-op if deposed)."""
        try:
            await self._conn.execute(self._release, {"name": lease.name, "token": lease.token})
        except psycopg.OperationalError as e:
            raise translate(e, f"releasing the lease {lease.name!r}") from e

    _live = sql.SQL(
        "SELECT name, holder FROM {t} WHERE name LIKE %s AND expires_at > now() ORDER BY name"
    ).format(t=_T)

    async def live(self, prefix: str) -> dict[str, str]:
        """The live leases whose name starts with ``prefix``: name → holder."""
        pattern = like_prefix(prefix)
        try:
            cur = await self._conn.execute(self._live, (pattern,))
            rows = await cur.fetchall()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the leases {prefix!r}*") from e
        return {str(name): str(holder) for name, holder in rows}

    async def current(self, name: str) -> LeaseHolder | None:
        """Who holds (or last held) the lease ``name``; None if nobody ever did."""
        try:
            cur = await self._conn.execute(self._current, (name,))
            row = await cur.fetchone()
        except psycopg.OperationalError as e:
            raise translate(e, f"reading the lease {name!r}") from e
        if row is None:
            return None
        return LeaseHolder(
            holder=row[0], token=int(row[1]), acquired_at=row[2], expires_at=row[3], expired=row[4]
        )


class Leadership:
    """Waits for a lease as a standby, then keeps it and says when it is lost.

    Args:
        leases: the lease store (:class:`PostgresLeases`).
        name: the lease, e.g. :func:`relay_lease` of a log.
        holder: this process's holder id (default :func:`new_holder_id`).
        config: timing.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        leases: LeaseStore,
        name: str,
        *,
        holder: str | None = None,
        config: LeaseConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self.name = name
        self.holder = holder or new_holder_id()
        self.config = config or LeaseConfig()
        self._clock = clock
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._lost: str | None = None

    @classmethod
    def holding(
        cls,
        leases: LeaseStore,
        lease: Lease,
        *,
        config: LeaseConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Leadership:
        """The leadership of a lease just acquired by ``leases.try_acquire`` (trusted for one
        ttl from now, less than from when it was sent: on the safe side)."""
        leadership = cls(leases, lease.name, holder=lease.holder, config=config, clock=clock)
        leadership._lease = lease
        leadership._valid_until = clock() + leadership.config.ttl * 0.9
        return leadership

    @property
    def lease(self) -> Lease:
        """The held lease.

        Raises:
            LeaseLost: none is held.
        """
        if self._lease is None:
            msg = f"no lease {self.name!r} held"
            raise LeaseLost(msg)
        return self._lease

    @property
    def token(self) -> int:
        """The fencing token of the held lease."""
        return self.lease.token

    def check(self) -> None:
        """Raises unless the lease is held and still trusted on this process's clock.

        Raises:
            LeaseLost: deposed, or the last successful renewal is older than the ttl.
        """
        if self._lost is not None:
            raise LeaseLost(self._lost)
        lease = self.lease
        if self._clock() >= self._valid_until:
            msg = f"lease {self.name!r} (token {lease.token}) not renewed within its ttl"
            raise LeaseLost(msg)

    async def acquire(self, stop: asyncio.Event) -> Lease | None:
        """Stands by until the lease is ours (returns it) or ``stop`` is set (returns None)."""
        announced: str | None = None
        while not stop.is_set():
            sent = self._clock()
            lease = await self._leases.try_acquire(self.name, self.holder, self.config.ttl)
            if lease is not None:
                self._lease, self._valid_until, self._lost = lease, sent + self.config.ttl, None
                return lease
            current = await self._leases.current(self.name)
            other = current.holder if current else "?"
            if announced != other:
                logger.info("standing by for %r: the lease is held by %s", self.name, other)
                announced = other
            await sleep_or_stop(stop, self.config.poll_every)
        return None

    async def keep(self) -> None:
        """Renews the lease until it is lost; run it as a task beside the work it guards.

        A failed renewal (token no longer current) marks the lease lost at once; while the
        database is unreachable it keeps trying until the lease's ttl has run out locally.
        """
        lease = self.lease
        failing = False
        while self._lost is None:
            await asyncio.sleep(self.config.renew_every)
            sent = self._clock()
            try:
                renewed = await self._leases.renew(lease, self.config.ttl)
            except StoreUnavailable as e:
                if not failing:
                    logger.warning("lease %r not renewed: %s", self.name, e)
                    failing = True
                if self._clock() >= self._valid_until:
                    self._lost = f"lease {self.name!r} expired: {e}"
                continue
            if not renewed:
                self._lost = f"lease {self.name!r} (token {lease.token}) taken over"
                logger.warning("%s", self._lost)
                return
            if failing:
                logger.info("lease %r renewed again", self.name)
                failing = False
            self._valid_until = sent + self.config.ttl

    async def release(self) -> None:
        """Releases the lease (best effort: if the database is gone, it simply expires)."""
        if self._lease is None:
            return
        lease, self._lease = self._lease, None
        self._lost = "released"
        try:
            await self._leases.release(lease)
        except StoreUnavailable as e:
            logger.debug("releasing the lease %r failed: %s", self.name, e)
