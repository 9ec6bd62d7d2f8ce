"""PostgreSQL plumbing shared by the adapters: DSN translation, connections, error mapping.

eventsourcing reads ``POSTGRES_*`` variables while the platform is configured by one DSN
(``APP_DSN``); :func:`eventsourcing_env` bridges the two so there is a single source of truth,
and every connection, eventsourcing's included, is made from the whole DSN (TLS options and
all). Error messages built here never show the DSN's password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventplatform.errors import ConfigurationError, StoreUnavailable
from eventplatform.redaction import redact
from eventplatform.store.dsn_factory import DSN_VARIABLE, DsnPostgresFactory

#: eventsourcing variables the platform refuses to see switched on (DESIGN invariant 1).
_FORBIDDEN_TRUE = ("POSTGRES_ENABLE_DB_FUNCTIONS",)
_TRUE = {"y", "yes", "t", "true", "on", "1"}
#: eventsourcing variables that would say where to connect: APP_DSN alone says that.
_FROM_THE_DSN = (
    "POSTGRES_DBNAME",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
)


def eventsourcing_env(
    dsn: str,
    *,
    pool_size: int = 4,
    create_table: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Translates a libpq DSN into the ``POSTGRES_*`` environment eventsourcing expects.

    Workers run with ``CREATE_TABLE=n``: tables are created once by the schema command,
    because eventsourcing's ``create_table`` races when several processes run it at once.
    Persistence is :class:`~eventplatform.store.dsn_factory.DsnPostgresFactory`, which connects
    with the whole DSN, so ``sslmode``, ``sslrootcert``, ``target_session_attrs``, ``service``
    and every other libpq option apply to eventsourcing's connections as to the platform's.

    Args:
        dsn: libpq URI or key=value connection string.
        pool_size: connections in the application's pool (overflow is capped at the same).
        create_table: let eventsourcing create its tables on start (tests and demo only).
        extra: eventsourcing variables to pass through (they win over the defaults).

    Returns:
        Variables for ``Application(env=...)``.

    Raises:
        ConfigurationError: the DSN cannot be parsed, an unsafe option is switched on, or
            ``extra`` names where to connect (``POSTGRES_HOST``, ...: the DSN says that).
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        msg = f"APP_DSN is not a valid libpq connection string: {redact(str(e).strip())}"
        raise ConfigurationError(msg) from None  # the cause quotes the DSN
    overridden = sorted(set(extra or {}) & set(_FROM_THE_DSN))
    if overridden:
        msg = (
            f"{', '.join(overridden)} cannot be set: APP_DSN says where and how to connect "
            "(put host, port, user, password, dbname and TLS options in it)"
        )
        raise ConfigurationError(msg)
    env = {
        "PERSISTENCE_MODULE": f"{DsnPostgresFactory.__module__}:{DsnPostgresFactory.__name__}",
        DSN_VARIABLE: dsn,
        # eventsourcing insists on these; DsnPostgresFactory connects with the DSN instead.
        "POSTGRES_DBNAME": str(params.get("dbname") or ""),
        "POSTGRES_HOST": str(params.get("host") or ""),
        "POSTGRES_PORT": str(params.get("port") or ""),
        "POSTGRES_USER": str(params.get("user") or ""),
        "POSTGRES_PASSWORD": "",
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size),
        # No pre-ping (a round trip per command): the write path recovers from a broken
        # connection itself (store/appender.py), and eventsourcing retries its reads.
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "CREATE_TABLE": "y" if create_table else "n",
        # eventsourcing's recorder, plus the traceparent of each save (store/trace_context.py).
        "APPLICATION_RECORDER_TOPIC": "eventplatform.store.trace_context:TraceContextRecorder",
    }
    env.update(extra or {})
    for key in _FORBIDDEN_TRUE:
        if env.get(key, "").lower() in _TRUE:
            msg = (
                f"{key} must stay off: its insert path skips the table lock, commits "
                "out of notification-id order, and the relay would then miss events"
            )
            raise ConfigurationError(msg)
    return env


def connector(dsn: str, *, connect_timeout: float = 5.0) -> Callable[[], psycopg.Connection[Any]]:
    """Returns a function that opens a new autocommit connection each time it is called.

    Errors are psycopg's own, untranslated: the caller tells a refused connection from a
    broken one. ``connect_timeout`` applies unless the DSN sets its own.

    Raises:
        ConfigurationError: the DSN cannot be parsed.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        msg = f"APP_DSN is not a valid libpq connection string: {e}"
        raise ConfigurationError(msg) from e
    if "connect_timeout" not in params:
        dsn = make_conninfo(dsn, connect_timeout=max(int(connect_timeout), 1))

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(dsn, autocommit=True)

    return connect


def translate(e: BaseException, what: str) -> StoreUnavailable:
    """Wraps a psycopg connection-level error in :class:`StoreUnavailable`.

    Args:
        e: the driver's error.
        what: what was being attempted, for the message.

    Returns:
        The platform error; raise it ``from e``.
    """
    return StoreUnavailable(redact(f"PostgreSQL unavailable while {what}: {e}".strip()))


def why_unreachable(dsn: str, timeout: int = 3) -> str:
    """Why PostgreSQL refuses ``dsn``, in libpq's words (credentials masked); "" if it does not.

    A pool that cannot connect reports only its timeout ("couldn't get a connection after
    30 s"); one direct attempt, on the error path only, tells the operator the reason
    ("server does not support SSL, but SSL was required", a wrong password, ...).
    """
    try:
        with psycopg.connect(dsn, connect_timeout=timeout):
            return ""
    except psycopg.Error as e:
        return redact(" ".join(str(e).split()))


@contextmanager
def connect(
    dsn: str, *, autocommit: bool = False, **kwargs: Any
) -> Iterator[psycopg.Connection[Any]]:
    """Opens one connection, translating a dead server into :class:`StoreUnavailable`.

    Args:
        dsn: libpq connection string.
        autocommit: open in autocommit mode.
        **kwargs: passed to :func:`psycopg.connect`.

    Yields:
        The open connection; closed on exit.
    """
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as e:
        raise translate(e, "connecting") from e
    with conn:
        yield conn


async def connect_async(dsn: str, what: str) -> psycopg.AsyncConnection[Any]:
    """Opens one autocommit async connection, translating a dead server.

    Args:
        dsn: libpq connection string.
        what: what the connection is for, for the error message.

    Raises:
        StoreUnavailable: PostgreSQL could not be reached.
    """
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        raise translate(e, what) from e


def like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern matching every text that starts with ``prefix`` (its ``%``, ``_``
    and ``\\`` taken literally)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
