"""Configuration, parsed once from the environment into a frozen object.

Every variable is prefixed ``APP_`` (the seed's names ``APP_DSN`` and ``APP_NATS_URL`` keep
working). A malformed value fails at start-up with a :class:`ConfigurationError` that names the
variable, so an operator never has to guess which of twenty settings was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventplatform.errors import ConfigurationError

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
#: What a log (application) name may look like: it becomes part of a table name.
LOG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def _subject_prefix(value: str) -> str:
    tokens = value.split(".")
    if not value or not all(_TOKEN.match(token) for token in tokens):
        msg = "must be dot-separated tokens of letters, digits, '_' or '-' (no wildcards)"
        raise ValueError(msg)
    return value


def _stream_name(value: str) -> str:
    if not _TOKEN.match(value):
        msg = "must be letters, digits, '_' or '-' (NATS stream names take no dots or spaces)"
        raise ValueError(msg)
    return value


def _log_name(value: str) -> str:
    if value and not LOG_NAME.match(value):
        msg = "must start with a lowercase letter and hold only a-z, 0-9 and '_' (max 41)"
        raise ValueError(msg)
    return value


def _nats_urls(value: str) -> str:
    for url in value.split(","):
        if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
            msg = f"{url.strip()!r} is not a nats://, tls://, ws:// or wss:// URL"
            raise ValueError(msg)
    return value


def _dsn(value: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except Exception as e:  # psycopg raises ProgrammingError with the parser's words
        msg = f"not a valid libpq connection string: {e}"
        raise ValueError(msg) from None
    return value


def _unset_if_empty(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _max_deliver(value: int) -> int:
    if value != -1 and value < 2:
        msg = "must be -1 (unlimited) or at least 2 (1 would drop a message on its first failure)"
        raise ValueError(msg)
    return value


class Settings(BaseSettings):
    """Everything a platform process needs to know, read from ``APP_*`` variables.

    Attributes:
        dsn: PostgreSQL connection string (``APP_DSN``), libpq URI or key=value form.
        nats_url: one or more comma-separated NATS server URLs (``APP_NATS_URL``).
        log: name of the event log (the eventsourcing application's name, ``APP_LOG``);
            no default: commands that need it take ``--log`` or this.
        stream: JetStream stream name (``APP_STREAM``).
        subject_prefix: first token(s) of every subject (``APP_SUBJECT_PREFIX``).
        stream_replicas: JetStream replicas, 3 for a cluster (``APP_STREAM_REPLICAS``).
        partitions: partitions of the event subjects (``APP_PARTITIONS``); with more than 1,
            consumers run one worker per partition, spread over their processes.
        duplicate_window: JetStream de-duplication window in seconds.
        relay_batch_size: notifications read and published per relay batch.
        relay_max_in_flight: publishes awaiting an ack at once (backpressure).
        relay_poll_interval: seconds between re-polls when no NOTIFY arrives.
        relay_lease_ttl: seconds a relay's leadership lease lives unrenewed; a standby takes
            over within about ``4/3`` of it after the leader dies or hangs.
        projection_batch_size: messages fetched and applied per projection transaction.
        projection_lease_ttl: seconds a projection worker's lease lives unrenewed; a standby
            takes over within about ``4/3`` of it after the worker dies, hangs or is cut off.
        event_verification: ``store`` (default) checks every consumed message against the
            event store, so a forged message can neither move a position nor reach user
            code; ``broker`` trusts NATS authorisation (read models apart from the store).
        projection_fetch_timeout: seconds a fetch waits for the first message.
        ack_wait: seconds JetStream waits for an ack before redelivering.
        pool_size: connections per pool opened by a platform process.
        consumer_batch_size: messages per fetch of a handler consumer.
        consumer_fetch_timeout: seconds a handler consumer's fetch waits.
        consumer_max_deliver: deliveries before a never-finished message is dead-lettered
            (-1: unlimited).
        consumer_max_ack_pending: unacked messages JetStream lets a consumer hold.
        retry_attempts: tries of a failing handler/projection event, the first included.
        retry_initial: seconds before the first retry.
        retry_multiplier: growth of the wait per retry.
        retry_cap: longest wait between retries, seconds.
        retry_jitter: randomised fraction of each wait (0..1).
        metrics_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (unset:
            off; 0: any free port, logged); every process on a host needs its own.
        metrics_host: the address the metrics endpoint binds (default every interface).
        metrics_interval: seconds between a process's looks at lag, pending messages and
            its connections (gauges and readiness).
        log_format: ``text`` (default) or ``json``: one JSON object per line, with labels.
    """

    model_config = SettingsConfigDict(env_prefix="APP_", frozen=True, extra="ignore")

    dsn: Annotated[str, AfterValidator(_dsn)] = ""
    nats_url: Annotated[str, AfterValidator(_nats_urls)] = "nats://127.0.0.1:4222"
    log: Annotated[str, AfterValidator(_log_name)] = ""
    stream: Annotated[str, AfterValidator(_stream_name)] = "EVENTS"
    subject_prefix: Annotated[str, AfterValidator(_subject_prefix)] = "events"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    partitions: int = Field(default=1, ge=1, le=1024)
    duplicate_window: float = Field(default=120.0, gt=0)
    relay_batch_size: int = Field(default=1000, ge=1, le=100_000)
    relay_max_in_flight: int = Field(default=4096, ge=1, le=1_000_000)
    relay_poll_interval: float = Field(default=1.0, gt=0, le=3600)
    relay_lease_ttl: float = Field(default=3.0, gt=0, le=600)
    projection_batch_size: int = Field(default=500, ge=1, le=10_000)
    projection_lease_ttl: float = Field(default=3.0, ge=0.5, le=600)
    event_verification: Literal["store", "broker"] = "store"
    projection_fetch_timeout: float = Field(default=1.0, gt=0, le=60)
    ack_wait: float = Field(default=30.0, gt=0, le=3600)
    pool_size: int = Field(default=4, ge=1, le=100)
    consumer_batch_size: int = Field(default=100, ge=1, le=10_000)
    consumer_fetch_timeout: float = Field(default=1.0, gt=0, le=60)
    consumer_max_deliver: Annotated[int, AfterValidator(_max_deliver)] = 20
    consumer_max_ack_pending: int = Field(default=1000, ge=1, le=1_000_000)
    retry_attempts: int = Field(default=5, ge=1, le=100)
    retry_initial: float = Field(default=0.1, ge=0, le=3600)
    retry_multiplier: float = Field(default=2.0, ge=1, le=100)
    retry_cap: float = Field(default=5.0, ge=0, le=3600)
    retry_jitter: float = Field(default=0.5, ge=0, le=1)
    metrics_port: Annotated[int | None, BeforeValidator(_unset_if_empty)] = Field(
        default=None, ge=0, le=65535
    )
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a container's port is reached from outside
    metrics_interval: float = Field(default=2.0, gt=0, le=300)
    log_format: Literal["text", "json"] = "text"

    @property
    def nats_servers(self) -> list[str]:
        """The NATS server URLs as a list (``APP_NATS_URL`` may hold several)."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def require_dsn(self) -> str:
        """Returns the DSN, or fails naming ``APP_DSN`` when it is unset.

        Raises:
            ConfigurationError: ``APP_DSN`` is empty.
        """
        if not self.dsn:
            msg = "APP_DSN is not set: give a PostgreSQL connection string, e.g. postgresql://user@host/db"
            raise ConfigurationError(msg)
        return self.dsn

    def require_log(self) -> str:
        """Returns the log name, or fails naming ``APP_LOG`` when it is unset.

        Raises:
            ConfigurationError: ``APP_LOG`` is empty.
        """
        if not self.log:
            msg = (
                "APP_LOG is not set: name the log to work on (the application's `name`, whose "
                "events live in <name>_events), or pass --log"
            )
            raise ConfigurationError(msg)
        return self.log


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parses settings once, from ``environ`` (default: the process environment).

    Args:
        environ: variables to read instead of ``os.environ`` (tests pass a dict).
        **overrides: values that win over the environment (already typed).

    Returns:
        The frozen settings.

    Raises:
        ConfigurationError: a value is malformed; the message names the variable.
    """
    try:
        if environ is None:
            return Settings(**overrides)  # type: ignore[arg-type]
        values: dict[str, object] = {
            key[len("APP_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("APP_") and key[len("APP_") :].lower() in Settings.model_fields
        }
        values.update(overrides)
        return Settings.model_validate(values)
    except ValidationError as e:
        problems = []
        for error in e.errors():
            field = ".".join(str(part) for part in error["loc"])
            variable = f"APP_{field.upper()}"
            problems.append(f"{variable}={error.get('input')!r}: {error['msg']}")
        msg = "invalid configuration: " + "; ".join(problems)
        raise ConfigurationError(msg) from e
