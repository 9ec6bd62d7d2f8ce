"""Retrying: capped exponential back-off with jitter, and which errors are worth retrying.

:class:`RetryPolicy` is a value: its :meth:`RetryPolicy.delays` schedule is computed, not slept,
so tests assert on the schedule and callers inject the sleep (``asyncio.sleep`` in production:
a retrying consumer never blocks the event loop, so other consumers in the process go on).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
import psycopg.errors

from eventplatform.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EventPlatformError,
    StoreUnavailable,
)
from eventplatform.settings import Settings


class PermanentError(EventPlatformError):
    """Raise (or subclass) this from a handler to say: retrying will not help.

    The message is dead-lettered (or, for a projection, parked) at once, without back-off.
    """


#: PostgreSQL errors that succeed when the same transaction is simply run again.
_TRANSIENT_PG = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
)
_TRANSIENT = (
    *_TRANSIENT_PG,
    StoreUnavailable,
    BrokerUnavailable,
    ConnectionError,
    TimeoutError,
    psycopg.OperationalError,
)


def is_transient(exc: BaseException) -> bool:
    """The default classification: is ``exc`` likely to go away if the work is retried?

    Transient: lost or refused connections (``ConnectionError``, ``TimeoutError``,
    psycopg's ``OperationalError``, the platform's ``StoreUnavailable`` and
    ``BrokerUnavailable``), serialization failures, deadlocks and lock timeouts.
    Never transient: :class:`PermanentError` and :class:`DecodeError`, wherever they appear
    in the cause chain. Anything else (a bug, a constraint violation) is permanent: it would
    fail the same way on every attempt.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermanentError | DecodeError):
            return False
        if isinstance(current, _TRANSIENT):
            return True
        current = current.__cause__
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait before trying a failed piece of work again.

    The n-th retry (n = 1, 2, ...) waits ``min(cap, initial * multiplier**(n-1))``, then
    jitter spreads it: with ``jitter = j`` the wait is uniform in ``[base*(1-j), base]``
    (``j = 1`` is "full jitter", ``j = 0`` none). Spreading keeps many consumers that failed
    together from hitting a recovering server all at once.

    Attributes:
        attempts: total tries including the first (1 = never retry).
        initial: seconds before the first retry.
        multiplier: growth factor of the wait per retry.
        cap: the longest wait, in seconds.
        jitter: fraction of each wait that is randomised, 0..1.
        transient: classifies errors worth retrying (default :func:`is_transient`).
    """

    attempts: int = 5
    initial: float = 0.1
    multiplier: float = 2.0
    cap: float = 5.0
    jitter: float = 0.5
    transient: Callable[[BaseException], bool] = field(default=is_transient, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.attempts < 1:
            problems.append(f"attempts must be >= 1, got {self.attempts}")
        if self.initial < 0:
            problems.append(f"initial must be >= 0 seconds, got {self.initial}")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier}")
        if self.cap < self.initial:
            problems.append(f"cap ({self.cap}) must be >= initial ({self.initial})")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be within 0..1, got {self.jitter}")
        if problems:
            raise ConfigurationError("invalid retry policy: " + "; ".join(problems))

    def base_delay(self, retry: int) -> float:
        """The un-jittered wait before retry number ``retry`` (1-based)."""
        return min(self.cap, self.initial * self.multiplier ** (retry - 1))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry number ``retry`` (1-based)."""
        base = self.base_delay(retry)
        if not self.jitter:
            return base
        low = base * (1 - self.jitter)
        return (rng or _RANDOM).uniform(low, base)

    def delays(self, rng: random.Random | None = None) -> list[float]:
        """The whole schedule: one wait per retry, ``attempts - 1`` of them."""
        return [self.delay(n, rng) for n in range(1, self.attempts)]

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether to try again after ``exc`` ended try number ``attempt`` (1-based)."""
        return attempt < self.attempts and self.transient(exc)


_RANDOM = random.Random()

#: A sleep function: ``asyncio.sleep`` in production, a recorder in tests.
Sleep = Callable[[float], Awaitable[None]]


def policy_from_settings(settings: Settings) -> RetryPolicy:
    """The retry policy described by ``APP_RETRY_*`` settings.

    Raises:
        ConfigurationError: the values contradict each other (e.g. cap below initial).
    """
    return RetryPolicy(
        attempts=settings.retry_attempts,
        initial=settings.retry_initial,
        multiplier=settings.retry_multiplier,
        cap=settings.retry_cap,
        jitter=settings.retry_jitter,
    )
