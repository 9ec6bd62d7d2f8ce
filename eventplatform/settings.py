"""Configuration, parsed once from the environment into a frozen object.

Every variable is prefixed ``APP_`` (the seed's names ``APP_DSN`` and ``APP_NATS_URL`` keep
working). A malformed value fails at start-up with a :class:`ConfigurationError` that names the
variable, so an operator never has to guess which of twenty settings was wrong. Values are
checked against what the servers accept (no ``inf``, no window JetStream would refuse), a
misspelt ``APP_*`` variable is warned about, and no message ever shows a password: the
passwords and tokens in ``APP_DSN`` and ``APP_NATS_URL`` are registered with
:mod:`eventplatform.redaction` as soon as they are read.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventplatform.errors import ConfigurationError
from eventplatform.redaction import redact, register_secret, secrets_in_url

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
#: What a log (application) name may look like: it becomes part of a table name.
LOG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
#: Words naming a log name's rule, for every message that refuses one.
LOG_NAME_RULE = "must start with a lowercase letter and hold only a-z, 0-9 and '_' (max 41)"

_NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_WEBSOCKET_SCHEMES = ("ws", "wss")
#: JetStream keeps durations as int64 nanoseconds; the platform's own bounds stay far below.
_DAY = 86_400.0


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


def validate_log_name(value: str) -> str:
    """Returns ``value`` if it is a log name, else raises ``ValueError`` saying the rule.

    The one check behind ``APP_LOG``, every ``--log`` flag and every application's ``name``.
    """
    if not LOG_NAME.match(value):
        msg = f"{value!r} is not a log name: it {LOG_NAME_RULE}"
        raise ValueError(msg)
    return value


def _log_name(value: str) -> str:
    if value and not LOG_NAME.match(value):
        raise ValueError(LOG_NAME_RULE)
    return value


def _nats_urls(value: str) -> str:
    kinds = set()
    for url in (url.strip() for url in value.split(",")):
        shown = redact(url)
        if not url:
            msg = "holds an empty entry: separate server URLs by single commas"
            raise ValueError(msg)
        parts = urlsplit(url)
        if parts.scheme.lower() not in _NATS_SCHEMES:
            msg = f"{shown!r} is not a nats://, tls://, ws:// or wss:// URL"
            raise ValueError(msg)
        if not parts.hostname:
            msg = f"{shown!r} names no host (write nats://HOST:PORT)"
            raise ValueError(msg)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0 or (port is None and parts.netloc.endswith(":")):
            msg = f"{shown!r} has no valid port (1..65535)"
            raise ValueError(msg)
        kinds.add("websocket" if parts.scheme.lower() in _WEBSOCKET_SCHEMES else "tcp")
    if len(kinds) > 1:
        msg = "mixes ws:// or wss:// with nats:// or tls:// URLs: a client speaks only one"
        raise ValueError(msg)
    return value


def _dsn_params(value: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(value)
    except Exception as e:  # psycopg raises ProgrammingError with the parser's words
        msg = f"not a valid libpq connection string: {redact(' '.join(str(e).split()))}"
        raise ValueError(msg) from None


def _dsn(value: str) -> str:
    if value:
        _dsn_params(value)
    return value


def _max_deliver(value: int) -> int:
    if value != -1 and value < 2:
        msg = "must be -1 (unlimited) or at least 2 (1 would drop a message on its first failure)"
        raise ValueError(msg)
    return value


def _readable_file(value: str) -> str:
    if value and not (Path(value).is_file() and os.access(value, os.R_OK)):
        msg = f"{value!r} is not a readable file"
        raise ValueError(msg)
    return value


def _max_bytes(value: int) -> int:
    if value != -1 and value < 1 << 20:
        msg = "must be -1 (unlimited) or at least 1048576 (1 MiB, NATS's default max payload)"
        raise ValueError(msg)
    return value


def _register_secrets(dsn: object, nats_url: object) -> None:
    """Registers the credentials of the raw values (valid or not) with the redaction rule."""
    if isinstance(dsn, str) and dsn:
        for secret in secrets_in_url(dsn):
            register_secret(secret)
        try:
            params = _dsn_params(dsn)
        except ValueError:
            params = {}
        register_secret(params.get("password"))
        register_secret(params.get("sslpassword"))
    if isinstance(nats_url, str):
        for url in nats_url.split(","):
            for secret in secrets_in_url(url.strip()):
                register_secret(secret)


class Settings(BaseSettings):
    """Everything a platform process needs to know, read from ``APP_*`` variables.

    Attributes:
        dsn: PostgreSQL connection string (``APP_DSN``), libpq URI or key=value form; every
            option in it (``sslmode``, ``sslrootcert``, ``target_session_attrs``, ``service``,
            ...) reaches every connection, eventsourcing's included.
        nats_url: one or more comma-separated NATS server URLs (``APP_NATS_URL``), all TCP
            (``nats://``, ``tls://``) or all websocket (``ws://``, ``wss://``).
        nats_creds: a ``.creds`` file (user JWT and NKEY seed) to authenticate with.
        nats_nkey_seed: a file holding an NKEY seed (``SU...``) to authenticate with.
        nats_tls_ca: a PEM file of the CA(s) that signed the servers' certificates; setting
            it (or a client certificate) makes the connection TLS.
        nats_tls_cert: a PEM client certificate (mutual TLS); needs ``nats_tls_key``.
        nats_tls_key: the client certificate's PEM private key.
        log: name of the event log (the eventsourcing application's name, ``APP_LOG``);
            no default: commands that need it take ``--log`` or this.
        stream: JetStream stream name (``APP_STREAM``).
        subject_prefix: first token(s) of every subject (``APP_SUBJECT_PREFIX``).
        stream_replicas: JetStream replicas, 3 for a cluster (``APP_STREAM_REPLICAS``).
        partitions: partitions of the event subjects (``APP_PARTITIONS``); with more than 1,
            consumers run one worker per partition, spread over their processes.
        stream_max_age: seconds the event stream keeps a message (0: for ever).
        stream_max_bytes: bytes the event stream keeps, oldest dropped first (-1: no limit).
        dlq_max_age: seconds the dead-letter stream keeps an announcement (0: for ever).
        dlq_max_bytes: bytes the dead-letter stream keeps (-1: no limit).
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
        consumer_concurrency: aggregates a handler worker handles at once (each aggregate's
            events one after another, in order).
        retry_attempts: tries of a failing handler/projection event, the first included.
        retry_initial: seconds before the first retry.
        retry_multiplier: growth of the wait per retry.
        retry_cap: longest wait between retries, seconds.
        retry_jitter: randomised fraction of each wait (0..1).
    """

    model_config = SettingsConfigDict(
        env_prefix="APP_", frozen=True, extra="ignore", allow_inf_nan=False
    )

    dsn: Annotated[str, AfterValidator(_dsn)] = Field(default="", repr=False)
    nats_url: Annotated[str, AfterValidator(_nats_urls)] = Field(
        default="nats://127.0.0.1:4222", repr=False
    )
    nats_creds: Annotated[str, AfterValidator(_readable_file)] = ""
    nats_nkey_seed: Annotated[str, AfterValidator(_readable_file)] = ""
    nats_tls_ca: Annotated[str, AfterValidator(_readable_file)] = ""
    nats_tls_cert: Annotated[str, AfterValidator(_readable_file)] = ""
    nats_tls_key: Annotated[str, AfterValidator(_readable_file)] = ""
    log: Annotated[str, AfterValidator(_log_name)] = ""
    stream: Annotated[str, AfterValidator(_stream_name)] = "EVENTS"
    subject_prefix: Annotated[str, AfterValidator(_subject_prefix)] = "events"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    partitions: int = Field(default=1, ge=1, le=1024)
    stream_max_age: float = Field(default=7 * _DAY, ge=0, le=3650 * _DAY)
    stream_max_bytes: Annotated[int, AfterValidator(_max_bytes)] = -1
    dlq_max_age: float = Field(default=30 * _DAY, ge=0, le=3650 * _DAY)
    dlq_max_bytes: Annotated[int, AfterValidator(_max_bytes)] = -1
    duplicate_window: float = Field(default=120.0, ge=0.001, le=_DAY)
    relay_batch_size: int = Field(default=1000, ge=1, le=100_000)
    relay_max_in_flight: int = Field(default=4096, ge=1, le=1_000_000)
    relay_poll_interval: float = Field(default=1.0, gt=0, le=3600)
    relay_lease_ttl: float = Field(default=3.0, gt=0, le=600)
    projection_batch_size: int = Field(default=500, ge=1, le=10_000)
    projection_lease_ttl: float = Field(default=3.0, ge=0.5, le=600)
    event_verification: Literal["store", "broker"] = "store"
    projection_fetch_timeout: float = Field(default=1.0, gt=0, le=60)
    ack_wait: float = Field(default=30.0, ge=0.001, le=3600)
    pool_size: int = Field(default=4, ge=1, le=100)
    consumer_batch_size: int = Field(default=100, ge=1, le=10_000)
    consumer_fetch_timeout: float = Field(default=1.0, gt=0, le=60)
    consumer_max_deliver: Annotated[int, AfterValidator(_max_deliver)] = 20
    consumer_max_ack_pending: int = Field(default=1000, ge=1, le=1_000_000)
    consumer_concurrency: int = Field(default=4, ge=1, le=256)
    retry_attempts: int = Field(default=5, ge=1, le=100)
    retry_initial: float = Field(default=0.1, ge=0, le=3600)
    retry_multiplier: float = Field(default=2.0, ge=1, le=100)
    retry_cap: float = Field(default=5.0, ge=0, le=3600)
    retry_jitter: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _register_credentials(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            _register_secrets(data.get("dsn"), data.get("nats_url"))
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        problems = []
        if self.nats_creds and self.nats_nkey_seed:
            problems.append("APP_NATS_CREDS and APP_NATS_NKEY_SEED: set one, not both")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            problems.append(
                "APP_NATS_TLS_CERT and APP_NATS_TLS_KEY: a client certificate needs both"
            )
        for name, max_age in (("STREAM", self.stream_max_age), ("DLQ", self.dlq_max_age)):
            # JetStream refuses a duplicate window longer than the stream's max age; a message
            # must also outlive its redelivery.
            floor = max(self.duplicate_window, self.ack_wait)
            if max_age and max_age < floor:
                problems.append(
                    f"APP_{name}_MAX_AGE={max_age:g}: must be 0 (for ever) or at least "
                    f"{floor:g} s (APP_DUPLICATE_WINDOW and APP_ACK_WAIT)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield ("dsn", redact(self.dsn))
        yield ("nats_url", redact(self.nats_url))
        yield from super().__repr_args__()

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


#: Every variable the settings read, e.g. ``APP_DSN``.
KNOWN_VARIABLES = tuple(f"APP_{name.upper()}" for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for ``APP_*`` variables no setting reads (a typo is otherwise silent).

    Each names the variable (never its value) and the closest known name, if any.
    """
    warnings = []
    for key in sorted(environ):
        if key.startswith("APP_") and key not in KNOWN_VARIABLES:
            close = difflib.get_close_matches(key, KNOWN_VARIABLES, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"{key} is not a setting of eventplatform and is ignored{hint}")
    return warnings


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parses settings once, from ``environ`` (default: the process environment).

    ``APP_*`` variables that no setting reads are logged as warnings.

    Args:
        environ: variables to read instead of ``os.environ`` (tests pass a dict).
        **overrides: values that win over the environment (already typed).

    Returns:
        The frozen settings.

    Raises:
        ConfigurationError: a value is malformed; the message names the variable and shows
            its value with any credential masked.
    """
    source = os.environ if environ is None else environ
    for warning in unknown_variables(source):
        logger.warning("%s", warning)
    try:
        if environ is None:
            return Settings(**overrides)  # type: ignore[arg-type]
        values: dict[str, object] = {
            key[len("APP_") :].lower(): value
            for key, value in environ.items()
            if key in KNOWN_VARIABLES
        }
        values.update(overrides)
        return Settings.model_validate(values)
    except ValidationError as e:
        problems = []
        for error in e.errors():
            field = ".".join(str(part) for part in error["loc"])
            reason = error["msg"].removeprefix("Value error, ")
            if field:
                problems.append(f"APP_{field.upper()}={error.get('input')!r}: {reason}")
            else:  # a rule across several variables: the message names them
                problems.append(reason)
        msg = "invalid configuration: " + "; ".join(redact(p) for p in problems)
        # Not ``from e``: pydantic's error repeats every raw input, credentials included, and
        # a traceback would print it; this message already names each variable and reason.
        raise ConfigurationError(msg) from None
