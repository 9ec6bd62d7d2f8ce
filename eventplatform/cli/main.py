"""``eventplatform``: the command line of the platform's processes.

Application code is named ``module:attribute`` (like uvicorn), imported with the working
directory on ``sys.path``. Every setting comes from ``APP_*`` variables (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventplatform.backoff import STOP_GRACE
from eventplatform.cli.arguments import log_level, log_name, non_negative_int, positive_seconds
from eventplatform.cli.loader import load, load_projection
from eventplatform.errors import ConfigurationError, EventPlatformError
from eventplatform.observability.logs import configure_logging
from eventplatform.observability.otel import configure_tracing
from eventplatform.observability.process import Observability
from eventplatform.redaction import RedactingStream
from eventplatform.settings import Settings, load_settings

logger = logging.getLogger("eventplatform")

_ENV_HELP = """
configuration (environment):
  APP_DSN                   PostgreSQL connection string (required, except for 'demo'); every
                            libpq option in it (sslmode, sslrootcert, ...) reaches every connection
  APP_NATS_URL              NATS server URL(s), comma-separated (default nats://127.0.0.1:4222)
  APP_NATS_CREDS            NATS .creds file (JWT + NKEY seed)
  APP_NATS_NKEY_SEED        NATS NKEY seed file
  APP_NATS_TLS_CA           PEM CA file that signed the NATS servers' certificates
  APP_NATS_TLS_CERT, APP_NATS_TLS_KEY   PEM client certificate and key (mutual TLS)
  APP_LOG                   log (application) name; required by relay, schema, wait, rebuild
                            unless --log is given
  APP_STREAM                JetStream stream name (default EVENTS)
  APP_SUBJECT_PREFIX        subject prefix (default events)
  APP_STREAM_REPLICAS       stream replicas, 3 on a cluster (default 1)
  APP_PARTITIONS            partitions of the event subjects; workers share them (default 1)
  APP_DUPLICATE_WINDOW      JetStream de-duplication window, seconds (default 120, max 86400)
  APP_STREAM_MAX_AGE, APP_STREAM_MAX_BYTES   event stream retention (default 7 days, no size
                            limit; 0 / -1: unlimited)
  APP_DLQ_MAX_AGE, APP_DLQ_MAX_BYTES   dead-letter stream retention (default 30 days, -1)
  APP_RELAY_BATCH_SIZE      notifications per relay batch (default 1000)
  APP_RELAY_POLL_INTERVAL   re-poll when no NOTIFY arrives, seconds (default 1.0)
  APP_RELAY_LEASE_TTL       relay leadership lease, seconds (default 3; takeover <= 4/3 of it)
  APP_PROJECTION_LEASE_TTL  projection worker lease, seconds (default 3; takeover <= 4/3 of it)
  APP_EVENT_VERIFICATION    store (default): check consumed messages against the event store;
                            broker: trust NATS authorisation (read models apart from the store)
  APP_PROJECTION_BATCH_SIZE messages per projection transaction (default 500)
  APP_ACK_WAIT              seconds before JetStream redelivers (default 30)
  APP_POOL_SIZE             connections per pool (default 4)
  APP_CONSUMER_BATCH_SIZE, APP_CONSUMER_FETCH_TIMEOUT, APP_CONSUMER_MAX_DELIVER,
  APP_CONSUMER_MAX_ACK_PENDING   handler consumers (defaults 100, 1.0, 20, 1000)
  APP_CONSUMER_CONCURRENCY  aggregates a handler worker handles at once (default 4)
  APP_RETRY_ATTEMPTS, APP_RETRY_INITIAL, APP_RETRY_MULTIPLIER, APP_RETRY_CAP,
  APP_RETRY_JITTER          retry policy (defaults 5, 0.1 s, 2.0, 5.0 s, 0.5)
  APP_METRICS_PORT          relay/project/handle serve /metrics, /healthz, /readyz on this port
                            (unset: off; 0: any free port, logged); one port per process
  APP_METRICS_HOST          address to bind (default 0.0.0.0)
  APP_METRICS_INTERVAL      seconds between looks at lag, pending and connections (default 2)
  APP_LOG_FORMAT            text (default) or json (one object per line, with labels)
  OTEL_TRACES_EXPORTER      otlp or console: export traces (needs eventplatform[otel]);
                            OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_* as usual
An APP_* variable that is none of these is warned about. No output shows a password: the
credentials in APP_DSN and APP_NATS_URL are masked (***) wherever they would appear.
"""


def _run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Runs a worker until SIGTERM or SIGINT, and never much longer.

    The first signal sets ``stop``: the worker finishes its batch and returns. Whatever still
    runs ``2 * STOP_GRACE`` seconds later (a wait that does not look at ``stop``) is
    cancelled, and a second signal cancels at once. Cancelling is safe: a worker may stop at
    any instant, and what it had not recorded is done again after a restart.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(main(stop))

        def on_signal() -> None:
            if stop.is_set():
                work.cancel()
                return
            stop.set()
            loop.call_later(STOP_GRACE * 2, work.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await work
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            logger.warning("stopped: work still waiting after the grace period was cancelled")

    asyncio.run(runner())


@contextlib.contextmanager
def _observed(
    settings: Settings, component: str, required: Sequence[str]
) -> Iterator[Observability | None]:
    """A long-running process's metrics endpoint and trace export, for as long as it runs."""
    shutdown = configure_tracing(f"eventplatform-{component}")
    observability = Observability.from_settings(settings, required=required)
    if observability is not None:
        observability.start()
    try:
        yield observability
    finally:
        if observability is not None:
            observability.stop()
        if shutdown is not None:
            shutdown()


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    """Creates the schema."""
    from eventplatform.store.schema import create_schema

    logs = args.log or [settings.require_log()]
    projections = [load_projection(ref) for ref in args.projection]
    create_schema(settings.require_dsn(), logs=logs, projections=projections)
    print(
        f"schema ready: logs {', '.join(logs)}"
        + (f"; projections {', '.join(p.name for p in projections)}" if projections else "")
    )
    return 0


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the relay."""
    from eventplatform.relay.runner import run_relay

    if args.log:
        settings = settings.model_copy(update={"log": args.log})
    settings.require_dsn()
    settings.require_log()
    with _observed(settings, "relay", ("postgres", "nats", "role")) as observability:
        _run_until_signal(lambda stop: run_relay(settings, stop, observability=observability))
    return 0


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a projection worker."""
    from eventplatform.consumers.runner import run_projection

    settings.require_dsn()
    projection = load_projection(args.projection)
    labels = {"component": "projection", "projection": projection.name}
    configure_logging(args.log_level, settings.log_format, labels=labels)
    with _observed(settings, "projection", ("postgres", "nats", "role")) as observability:
        _run_until_signal(
            lambda stop: run_projection(settings, projection, stop, observability=observability)
        )
    return 0


def cmd_handle(args: argparse.Namespace, settings: Settings) -> int:
    """Runs an idempotent handler's consumer."""
    from eventplatform.consumers.handlers import IdempotentEventHandler
    from eventplatform.consumers.runner import run_handler

    settings.require_dsn()
    handler = load(args.handler, what="handler")
    if not isinstance(handler, IdempotentEventHandler):
        msg = f"{args.handler!r} is not an IdempotentEventHandler (decorate it with @idempotent)"
        raise ConfigurationError(msg)
    labels = {"component": "handler", "handler": handler.name}
    configure_logging(args.log_level, settings.log_format, labels=labels)
    with _observed(settings, "handler", ("postgres", "nats")) as observability:
        _run_until_signal(
            lambda stop: run_handler(settings, handler, stop, observability=observability)
        )
    return 0


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    """Waits for a projection to reach a position."""
    from eventplatform.store.waiting import wait_for

    reached = wait_for(
        settings.require_dsn(),
        projection=args.projection,
        log=args.log or settings.require_log(),
        position=args.position,
        timeout=args.timeout,
    )
    print(f"{args.projection} is at {reached}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Prints positions and lag."""
    from eventplatform.cli.status import read_status

    logs = args.log or ([settings.log] if settings.log else None)
    status = read_status(settings.require_dsn(), logs)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    print(
        f"{'log':<20} {'head':>10} {'relay':>10} {'lag':>8} {'unrouted':>8} {'oversized':>9}"
        "  updated"
    )
    for log in status.logs:
        print(
            f"{log.log:<20} {log.head:>10} {log.relay_position:>10} {log.relay_lag:>8}"
            f" {log.unrouted:>8} {log.oversized:>9}  {log.relay_updated_at or '-'}"
        )
        print(f"  leader: {log.leader or '-'} since {log.leader_since or '-'}")
    print(f"\n{'projection':<20} {'log':<12} {'position':>10} {'lag':>8} {'version':>7}  updated")
    for p in status.projections:
        print(
            f"{p.projection:<20} {p.log:<12} {p.position:>10} {p.lag:>8}"
            f" {p.version if p.version is not None else '-':>7}  {p.updated_at or '-'}"
        )
        if p.leader:
            print(f"  worker: {p.leader} since {p.leader_since}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the demo."""
    from eventplatform.cli.demo import run_demo

    return run_demo(settings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="eventplatform",
        description="Event-sourced services with CQRS read models on PostgreSQL and NATS.",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schema", help="create event store, platform and read-model tables")
    p.add_argument(
        "--log", action="append", type=log_name, help="log name (repeatable; default APP_LOG)"
    )
    p.add_argument(
        "--projection", action="append", default=[], help="projection module:attr (repeatable)"
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("relay", help="publish the log's events to JetStream (leader/standby)")
    p.add_argument("--log", type=log_name, help="log name (default APP_LOG)")
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("project", help="run a projection worker")
    p.add_argument(
        "projection", help="projection module:attr, e.g. projections:ProductViewProjection"
    )
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("handle", help="run an idempotent handler (side effects, retries, DLQ)")
    p.add_argument("handler", help="handler module:attr (an IdempotentEventHandler)")
    p.set_defaults(func=cmd_handle)

    p = sub.add_parser("wait", help="wait until a projection has applied a position")
    p.add_argument("--projection", required=True, help="projection name")
    p.add_argument(
        "--position", required=True, type=non_negative_int, help="notification id to wait for"
    )
    p.add_argument("--log", type=log_name, help="log name (default APP_LOG)")
    p.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds (default 10)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("status", help="log heads, relay and projection positions, lag")
    p.add_argument(
        "--log",
        action="append",
        type=log_name,
        help="log name (repeatable; default APP_LOG, else every log)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "demo", help="the whole flow on throwaway servers (or APP_DSN/APP_NATS_URL if set)"
    )
    p.set_defaults(func=cmd_demo)

    from eventplatform.cli.dlq import add_dlq_parser

    add_dlq_parser(sub)  # dlq list | show ID | retry ID|--all | discard ID
    from eventplatform.cli.rebuild import add_rebuild_parser

    add_rebuild_parser(sub)  # rebuild PROJECTION [--verify-only] [--aggregate ID] [--from POS]
    from eventplatform.cli.audit import add_audit_parser

    add_audit_parser(sub)  # audit [--log L] [--json] [--repair] [--delete-extra]
    from eventplatform.cli.prune import add_prune_parser

    add_prune_parser(sub)  # prune --older-than AGE [--dry-run]
    from eventplatform.cli.health import add_health_parser

    add_health_parser(sub)  # health [--stream] [--no-postgres] [--no-nats]
    from eventplatform.cli.schemas import add_schemas_parser

    add_schemas_parser(sub)  # schemas TARGET... --out DIR | --check DIR
    return parser


def _labels(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """The labels every JSON log line of this process carries (the metrics' labels)."""
    labels = {"component": str(args.command)}
    if args.command == "relay" and (args.log or settings.log):
        labels["log"] = args.log or settings.log
    return labels


@contextmanager
def _redacted_output() -> Iterator[None]:
    """Masks credentials in everything written to stdout and stderr meanwhile."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(stdout), RedactingStream(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eventplatform`` command.

    Everything it writes, its own lines, logs, library warnings and tracebacks, goes through
    the redaction rule (:mod:`eventplatform.redaction`).

    Returns:
        The exit status: 0 on success, 2 for bad configuration or arguments, 1 for other
        errors.
    """
    with _redacted_output():
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, or argparse's one-line usage error
            return e.code if isinstance(e.code, int) else 2
        configure_logging(args.log_level)
        try:
            settings = load_settings()
            configure_logging(args.log_level, settings.log_format, labels=_labels(args, settings))
            func: Callable[[argparse.Namespace, Settings], int] = args.func
            return func(args, settings)
        except ConfigurationError as e:
            print(f"eventplatform: configuration error: {e}", file=sys.stderr)
            return 2
        except EventPlatformError as e:
            print(f"eventplatform: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        except Exception as e:  # a bug: show where, but through the redaction like the rest
            traceback.print_exc()
            print(f"eventplatform: unexpected {type(e).__name__}: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
