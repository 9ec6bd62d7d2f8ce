"""eventsourcing's PostgreSQL factory, connecting with the whole DSN.

eventsourcing 9.5 builds its pool from five variables (``POSTGRES_DBNAME``, ``_HOST``, ``_PORT``,
``_USER``, ``_PASSWORD``): every other libpq option of ``APP_DSN`` (``sslmode``,
``sslrootcert``, ``sslcert``, ``target_session_attrs``, ``service``, ``options``, ...) would be
dropped, and ``sslmode=require`` would silently write in plaintext. This factory, selected by
``PERSISTENCE_MODULE`` (see :func:`~eventplatform.store.postgres.eventsourcing_env`), lets
eventsourcing build its datastore as usual, then points the still-closed pool at the DSN itself,
so every connection eventsourcing opens (writes, reads, LISTEN) is made from all of it.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

from eventplatform.errors import ConfigurationError

#: The eventsourcing variable that carries the DSN to :class:`DsnPostgresFactory`.
DSN_VARIABLE = "EVENTPLATFORM_DSN"

#: Pool keyword arguments eventsourcing derives from its five variables; the DSN has them.
_DERIVED = ("dbname", "host", "port", "user", "password")


class DsnPostgresFactory(PostgresFactory):
    """:class:`eventsourcing.postgres.PostgresFactory` whose pool connects with the DSN.

    eventsourcing's own settings (pool size, timeouts, pre-ping, lock timeout, schema,
    ``POSTGRES_GET_PASSWORD_TOPIC``) keep working; only where to connect, and how, comes from
    the DSN.

    Raises:
        ConfigurationError: ``EVENTPLATFORM_DSN`` is missing from the environment.
    """

    def __init__(self, env: Environment | Any) -> None:
        super().__init__(env)
        dsn = self.env.get(DSN_VARIABLE)
        if not dsn:
            msg = f"{DSN_VARIABLE} is not set: build the environment with eventsourcing_env()"
            raise ConfigurationError(msg)
        pool = self.datastore.pool
        # The pool is created closed (open=False): no connection was made from the five
        # variables. psycopg builds each connection from conninfo plus kwargs, kwargs winning,
        # so the derived ones go: the DSN alone says where and how to connect. A password
        # callback (POSTGRES_GET_PASSWORD_TOPIC) still sets kwargs["password"] per connect.
        derived = pool.kwargs if isinstance(pool.kwargs, dict) else {}
        pool.conninfo = dsn
        pool.kwargs = {k: v for k, v in derived.items() if k not in _DERIVED}
