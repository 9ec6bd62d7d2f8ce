"""Which version of each projection serves its read model.

A projection declares ``version``; the version that built the live table is recorded in
``eventplatform_projection_versions``. The first worker of a projection records its own
version; a rebuild records the rebuilt version when it swaps. A worker started with a newer
version than the serving one keeps serving the old read model and tells the operator to run
``eventplatform rebuild``: applying new code on top of rows the old code wrote would mix
two meanings in one table.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from eventplatform.consumers.projection import Projection
from eventplatform.errors import ConfigurationError
from eventplatform.store.schema import PROJECTION_VERSIONS, TRACKING

logger = logging.getLogger(__name__)


class PostgresProjectionVersions:
    """Reads and records serving versions with the caller's cursor (and transaction)."""

    _select = sql.SQL("SELECT version FROM {} WHERE projection = %s").format(
        sql.Identifier(PROJECTION_VERSIONS)
    )
    _insert_missing = sql.SQL(
        "INSERT INTO {} (projection, version) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(PROJECTION_VERSIONS))
    _upsert = sql.SQL(
        "INSERT INTO {} (projection, version) VALUES (%s, %s) ON CONFLICT (projection)"
        " DO UPDATE SET version = EXCLUDED.version, updated_at = now()"
    ).format(sql.Identifier(PROJECTION_VERSIONS))

    def serving(self, cur: psycopg.Cursor[Any], projection: str) -> int | None:
        """The version serving ``projection`` (None when none is recorded)."""
        cur.execute(self._select, (projection,))
        row = cur.fetchone()
        return None if row is None else int(row[0])

    def record(self, cur: psycopg.Cursor[Any], projection: str, version: int) -> None:
        """Records ``version`` as serving (a rebuild's swap does this)."""
        cur.execute(self._upsert, (projection, version))

    def adopt(self, cur: psycopg.Cursor[Any], projection: Projection) -> int:
        """Records the projection's version when none serves yet; returns the serving one.

        Logs a warning naming the command to run when the projection is newer than the
        read model it would write to.
        """
        cur.execute(self._insert_missing, (projection.name, projection.version))
        serving = self.serving(cur, projection.name)
        assert serving is not None  # inserted above when missing
        if projection.version > serving:
            logger.warning(
                "projection %s is version %d but its read model was built by version %d: "
                "run 'eventplatform rebuild %s' to build and serve version %d",
                projection.name,
                projection.version,
                serving,
                type(projection).__module__ + ":" + type(projection).__qualname__,
                projection.version,
            )
        return serving

    _partitions = sql.SQL("SELECT partitions FROM {} WHERE projection = %s").format(
        sql.Identifier(PROJECTION_VERSIONS)
    )
    _partitions_locked = sql.SQL(
        "SELECT partitions FROM {} WHERE projection = %s FOR UPDATE"
    ).format(sql.Identifier(PROJECTION_VERSIONS))
    _set_partitions = sql.SQL("UPDATE {} SET partitions = %s WHERE projection = %s").format(
        sql.Identifier(PROJECTION_VERSIONS)
    )
    _tracked = sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE projection = %s OR projection LIKE %s)"
    ).format(sql.Identifier(TRACKING))

    def partitions(self, cur: psycopg.Cursor[Any], projection: str) -> int:
        """The partitions ``projection``'s positions are kept in (1 when unrecorded)."""
        cur.execute(self._partitions, (projection,))
        row = cur.fetchone()
        return 1 if row is None else int(row[0])

    def adopt_partitions(self, cur: psycopg.Cursor[Any], projection: Projection, n: int) -> None:
        """Records that ``projection`` runs in ``n`` partitions, or refuses a change.

        Positions are kept per partition: a projection that applied anything under one
        partitioning cannot go on under another (its positions would start again at 0 and
        every event would apply twice). It must be rebuilt, or its tracking reset.

        Raises:
            ConfigurationError: it was run with another number of partitions.
        """
        cur.execute(self._insert_missing, (projection.name, projection.version))
        cur.execute(self._partitions_locked, (projection.name,))
        row = cur.fetchone()
        recorded = 1 if row is None else int(row[0])
        if recorded == n:
            return
        cur.execute(self._tracked, (projection.name, f"{projection.name}#%"))
        tracked = cur.fetchone()
        if tracked is not None and tracked[0]:
            msg = (
                f"projection {projection.name!r} keeps its positions in {recorded} partition(s),"
                f" APP_PARTITIONS is {n}: run it with APP_PARTITIONS={recorded}, or rebuild it"
                " under the new partitioning (eventplatform rebuild --restart)"
            )
            raise ConfigurationError(msg)
        cur.execute(self._set_partitions, (n, projection.name))


def adopt_version(conn: psycopg.Connection[Any], projection: Projection) -> int | None:
    """:meth:`PostgresProjectionVersions.adopt` in its own transaction; None without the table
    (a database whose schema predates versions: run ``eventplatform schema``)."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            return PostgresProjectionVersions().adopt(cur, projection)
    except psycopg.errors.UndefinedTable:
        logger.warning(
            "no %s table: run 'eventplatform schema' to track versions", PROJECTION_VERSIONS
        )
        return None
