"""Which failures a consumer waits out, and which it records against a message.

A consumer must tell the two apart: an outage (PostgreSQL or NATS away) must never
dead-letter or park anything, since the message is fine; a failure of the message or of the
code that handles it must never stop the consumer, since the next message may be fine.
"""

from __future__ import annotations

import nats.errors
import psycopg
import psycopg.errors
import psycopg_pool

from eventplatform.errors import BrokerUnavailable, StoreUnavailable

#: Errors raised inside a transaction that is otherwise healthy: retry it, it is no outage.
IN_TRANSACTION_ERRORS = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)


_GONE = (StoreUnavailable, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


def is_outage(e: BaseException) -> bool:
    """Whether ``e`` means PostgreSQL cannot be reached or the connection is gone.

    Looks through the cause chain, so a handler error raised ``from`` a lost connection counts.
    """
    current: BaseException | None = e
    while current is not None:
        if isinstance(
            current, StoreUnavailable | psycopg.InterfaceError | psycopg_pool.PoolTimeout
        ):
            return True
        if isinstance(current, psycopg.OperationalError) and not isinstance(
            current, IN_TRANSACTION_ERRORS
        ):
            return True
        current = current.__cause__
    return False


def is_fault(e: BaseException) -> bool:
    """Whether ``e`` is an infrastructure fault a worker waits out (rather than a defect).

    Faults: PostgreSQL unreachable or restarting (admin shutdown, connection reset, cannot
    connect now...), a broken connection, a pool that cannot hand out a connection, NATS
    unreachable, timeouts, OS-level connection errors, and a missing table (the schema job may
    run after the workers start).
    """
    return is_outage(e) or isinstance(
        e,
        BrokerUnavailable
        | psycopg.OperationalError
        | psycopg.errors.UndefinedTable
        | nats.errors.Error
        | TimeoutError
        | OSError,
    )
