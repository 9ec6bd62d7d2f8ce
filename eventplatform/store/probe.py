"""A connection that looks at PostgreSQL now and then: for gauges and readiness, not for work.

It reconnects on the next look after any failure, bounds each look by a timeout (a server
that stopped answering must not hang the look), and turns every failure into
:class:`StoreUnavailable` with the reason, which readiness shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg import sql

from eventplatform.errors import StoreUnavailable
from eventplatform.store.postgres import connect_async, translate


class PostgresProbe:
    """One autocommit connection, opened lazily, reopened after a failure.

    Args:
        dsn: libpq connection string (the process's own).
        timeout: seconds one look may take, connecting included.
    """

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def fetchall(
        self, query: sql.Composable | str, params: Any = None
    ) -> list[tuple[Any, ...]]:
        """Runs one query and returns its rows.

        Raises:
            StoreUnavailable: PostgreSQL did not answer in time, or refused the query (the
                message says why, e.g. a missing table).
        """
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.closed:
                    self._conn = await connect_async(self._dsn, "opening the probe connection")
                cur = await self._conn.execute(query, params)  # type: ignore[arg-type]
                return await cur.fetchall()
        except TimeoutError as e:
            await self.close()
            msg = f"PostgreSQL did not answer within {self._timeout:g}s"
            raise StoreUnavailable(msg) from e
        except psycopg.OperationalError as e:
            await self.close()
            raise translate(e, "probing") from e
        except psycopg.Error as e:
            await self.close()
            msg = f"PostgreSQL refused the probe: {' '.join(str(e).split())}"
            raise StoreUnavailable(msg) from e

    async def close(self) -> None:
        """Closes the connection (the next look opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
