"""The fence a holder's commits pass through: its token must still be the lease's token.

Leadership only saves work. What keeps a commit exactly-once is this check, made in the
committing transaction itself (DESIGN invariant 7): ``SELECT ... FOR SHARE`` on the lease row
with the holder's token. A concurrent takeover (which updates the row and bumps the token)
either committed first, and the token no longer matches, so this transaction is refused; or it
waits for the row lock until this transaction has committed, and the new holder then reads
what this one wrote. Two processes that both believe they lead can never both commit.

The check is made last, just before the commit, so the row is locked for the commit only: a
holder that hangs in the middle of a batch does not keep a standby from taking over, and
PostgreSQL ends the hung transaction itself (``idle_in_transaction_session_timeout``, set by
the caller) together with the row locks it holds.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
from psycopg import sql

from eventplatform.leases.leadership import LeaseLost
from eventplatform.store.schema import LEASES


class FencedOff(LeaseLost):
    """A commit was refused: the lease has another token now, or the position it was to move
    from has moved. Whatever the transaction did is rolled back."""


class Fence(Protocol):
    """What a committing worker needs of its lease: a check inside its own transaction.

    A Protocol, so that tests and tools can run a worker without a lease (:class:`NoFence`).
    """

    def check(self, cur: psycopg.Cursor[Any]) -> None:
        """Raises :class:`FencedOff` unless the caller still holds the lease; locks the lease
        row against a takeover until the caller's transaction ends."""
        ...


class LeaseFence:
    """The fence of one lease term: ``name`` held with ``token``.

    Args:
        name: the lease (e.g. :func:`~eventplatform.leases.projection_lease`).
        token: the fencing token the holder acquired.
    """

    _check = sql.SQL("SELECT 1 FROM {} WHERE name = %s AND token = %s FOR SHARE").format(
        sql.Identifier(LEASES)
    )

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token

    def check(self, cur: psycopg.Cursor[Any]) -> None:
        """Raises :class:`FencedOff` when the lease has moved on to another token."""
        cur.execute(self._check, (self.name, self.token))
        if cur.fetchone() is None:
            msg = f"lease {self.name!r} is no longer held with token {self.token}: commit refused"
            raise FencedOff(msg)


class NoFence:
    """No lease: for tests and single-process tools that own their positions outright.

    The tracking row's compare-and-set still refuses a commit from a stale position.
    """

    def check(self, cur: psycopg.Cursor[Any]) -> None:
        """Accepts every commit."""
