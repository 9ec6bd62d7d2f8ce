"""Creating the schema: once, explicitly, idempotently, safe from several processes at once.

eventsourcing's ``CREATE_TABLE`` races when several processes start together (duplicate type,
"tuple concurrently updated"). Here every statement runs while this process holds one
transaction-independent advisory lock, so concurrent ``eventplatform schema`` runs queue up and
the later ones find everything in place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment
from psycopg import sql

from eventplatform.errors import ConfigurationError, SchemaError
from eventplatform.settings import LOG_NAME
from eventplatform.store.postgres import connect, eventsourcing_env

logger = logging.getLogger(__name__)

#: Key of the advisory lock that serialises schema changes (any constant bigint works).
SCHEMA_LOCK_KEY = 0x6576_706C_7363  # "evplsc"

RELAY_POSITIONS = "eventplatform_relay_positions"
TRACKING = "eventplatform_tracking"
DEAD_LETTERS = "eventplatform_dead_letters"
PROCESSED_EVENTS = "eventplatform_processed_events"
PARKED_EVENTS = "eventplatform_parked_events"
LEASES = "eventplatform_leases"
UNROUTED_EVENTS = "eventplatform_unrouted_events"
OVERSIZED_EVENTS = "eventplatform_oversized_events"
PROJECTION_VERSIONS = "eventplatform_projection_versions"
CONSUMER_CURSORS = "eventplatform_consumer_cursors"

#: Channel a committed tracking update is announced on; payload "projection log position".
TRACKING_CHANNEL = "eventplatform_tracking"


class TableOwner(Protocol):
    """Something with tables of its own to create: a projection's read model, a handler's
    tables. Structural, so the store needs to know nothing about consumers."""

    @property
    def name(self) -> str:
        """The owner's name, for messages."""
        ...

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        """Creates the owner's tables if missing (idempotent: ``IF NOT EXISTS``)."""
        ...


_PLATFORM_TABLES = [
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " log text PRIMARY KEY,"
        " position bigint NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(RELAY_POSITIONS)),
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " projection text NOT NULL,"
        " log text NOT NULL,"
        " position bigint NOT NULL,"
        " stream_sequence bigint NOT NULL DEFAULT 0,"
        " updated_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (projection, log))"
    ).format(sql.Identifier(TRACKING)),
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " id bigserial PRIMARY KEY,"
        " consumer text NOT NULL,"
        " subject text,"
        " message_id text,"
        " error text NOT NULL,"
        " attempts integer NOT NULL DEFAULT 1,"
        " body bytea NOT NULL,"
        # bytea, not jsonb: jsonb refuses a NUL, and a dead letter must never be refused.
        " headers bytea,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        # Added by the dead-letter/parking feature (issue 4): see dead_letters.py.
        " event_id text,"
        " log text,"
        " aggregate text,"
        " sequence bigint,"
        " parked boolean NOT NULL DEFAULT false,"
        " status text NOT NULL DEFAULT 'open',"
        " resolved_at timestamptz)"
    ).format(sql.Identifier(DEAD_LETTERS)),
    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (consumer, status, id)").format(
        sql.Identifier(f"{DEAD_LETTERS}_consumer_idx"), sql.Identifier(DEAD_LETTERS)
    ),
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " handler text NOT NULL,"
        " event_id text NOT NULL,"
        " processed_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (handler, event_id))"
    ).format(sql.Identifier(PROCESSED_EVENTS)),
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " id bigserial PRIMARY KEY,"
        " consumer text NOT NULL,"
        " aggregate text NOT NULL,"
        " log text NOT NULL,"
        " sequence bigint NOT NULL,"
        " subject text,"
        " body bytea NOT NULL,"
        " headers bytea,"
        " dead_letter_id bigint,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(PARKED_EVENTS)),
    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (consumer, aggregate, id)").format(
        sql.Identifier(f"{PARKED_EVENTS}_aggregate_idx"), sql.Identifier(PARKED_EVENTS)
    ),
    # Leases (relay of a log, worker of a projection): one row per name, see leases/.
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " name text PRIMARY KEY,"
        " holder text NOT NULL,"
        " token bigint NOT NULL,"
        " acquired_at timestamptz NOT NULL DEFAULT now(),"
        " expires_at timestamptz NOT NULL)"
    ).format(sql.Identifier(LEASES)),
    # Events whose topic maps to no subject (issue 3): recorded, never silently dropped.
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " log text NOT NULL,"
        " notification_id bigint NOT NULL,"
        " topic text NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (log, notification_id))"
    ).format(sql.Identifier(UNROUTED_EVENTS)),
    # How far in the stream each projection worker got, dead letters included (issue 10).
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " consumer text PRIMARY KEY,"
        " stream_sequence bigint NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(CONSUMER_CURSORS)),
    # Events too large for the broker (issue 16): recorded and skipped, never a wedge.
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " log text NOT NULL,"
        " notification_id bigint NOT NULL,"
        " topic text NOT NULL,"
        " size bigint NOT NULL,"
        " max_payload bigint NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (log, notification_id))"
    ).format(sql.Identifier(OVERSIZED_EVENTS)),
    # The version serving each projection's read model (issue 5): see versions.py.
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " projection text PRIMARY KEY,"
        " version integer NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(PROJECTION_VERSIONS)),
]


def events_table(log: str) -> str:
    """The eventsourcing table that holds a log's events (and is the outbox).

    Raises:
        ConfigurationError: ``log`` is not a log name (empty, or not ``[a-z][a-z0-9_]*``).
    """
    if not LOG_NAME.match(log):
        msg = (
            f"{log!r} is not a log name: it must start with a lowercase letter and hold only "
            "a-z, 0-9 and '_' (max 41)"
        )
        raise ConfigurationError(msg)
    return f"{log}_events"


def create_schema(
    dsn: str,
    *,
    logs: Iterable[str] = (),
    projections: Iterable[TableOwner] = (),
) -> None:
    """Creates the event store, the platform's tables and the read models, if missing.

    Args:
        dsn: PostgreSQL connection string.
        logs: log (application) names whose event tables to create.
        projections: projections whose read-model tables to create.

    Raises:
        SchemaError: a statement failed; the message says which part.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    logs = list(logs)
    for log in logs:
        events_table(log)  # refuses a malformed name before anything is created
    with connect(dsn, autocommit=True) as lock_conn:
        # A session-level lock on its own connection: held across the separate
        # transactions eventsourcing uses for its types and tables below.
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            _create_platform_tables(lock_conn)
            for log in logs:
                _create_event_store(dsn, log)
            for projection in projections:
                _create_read_model(lock_conn, projection)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


#: Columns added after a table was first released (idempotent).
_ADDED_COLUMNS = [
    # The partitions a projection's positions are kept in (issue 14): see consumers/versions.py.
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS partitions integer NOT NULL DEFAULT 1").format(
        sql.Identifier(PROJECTION_VERSIONS)
    ),
]

#: Columns an earlier version created as jsonb; they hold original headers now, as bytea.
_JSONB_TO_BYTEA = ((DEAD_LETTERS, "headers"), (PARKED_EVENTS, "headers"))


def _create_platform_tables(conn: psycopg.Connection[object]) -> None:
    try:
        with conn.transaction():
            for statement in _PLATFORM_TABLES:
                conn.execute(statement)
            for table, column in _JSONB_TO_BYTEA:
                _jsonb_to_bytea(conn, table, column)
            for statement in _ADDED_COLUMNS:
                conn.execute(statement)
    except psycopg.Error as e:
        msg = f"creating the platform tables failed: {e}"
        raise SchemaError(msg) from e


def _jsonb_to_bytea(conn: psycopg.Connection[object], table: str, column: str) -> None:
    """Migrates a jsonb column to bytea holding the same JSON text (idempotent)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT data_type = 'jsonb' FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s",
            (table, column),
        )
        is_jsonb = cur.fetchone() == (True,)
    if is_jsonb:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {t} ALTER COLUMN {c} TYPE bytea USING convert_to({c}::text, 'UTF8')"
            ).format(t=sql.Identifier(table), c=sql.Identifier(column))
        )
        logger.info("migrated %s.%s from jsonb to bytea", table, column)


def _create_event_store(dsn: str, log: str) -> None:
    env = Environment(name=log, env=eventsourcing_env(dsn, pool_size=1, create_table=True))
    try:
        with PostgresFactory(env) as factory:
            factory.application_recorder()  # creates the table and its index
    except Exception as e:  # eventsourcing wraps psycopg errors in its own tree
        msg = f"creating the event store table {events_table(log)!r} failed: {e}"
        raise SchemaError(msg) from e
    logger.info("event store %s ready", events_table(log))


def _create_read_model(conn: psycopg.Connection[object], projection: TableOwner) -> None:
    try:
        with conn.transaction(), conn.cursor() as cur:
            projection.create_tables(cur)
    except psycopg.Error as e:
        msg = f"creating the read model of projection {projection.name!r} failed: {e}"
        raise SchemaError(msg) from e
    logger.info("read model of %s ready", projection.name)
