"""``eventplatform rebuild PROJECTION``: rebuild a read model from the event store, verify, swap.

Exit status: 0 when the rebuilt read model was equal (or its differences were expected from a
version change, or accepted) and, unless ``--verify-only``, swapped in; 1 when it differs and
nothing was swapped; 2 for bad arguments; 130 when interrupted (Ctrl-C), with the live read
model untouched and the shadow resumable by running the same command again.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from typing import Any
from uuid import UUID

from eventplatform.cli.arguments import log_name, non_negative_int, positive_int
from eventplatform.cli.loader import load_projection
from eventplatform.errors import ConfigurationError
from eventplatform.settings import Settings

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_rebuild_parser(sub: Any) -> None:
    """Registers ``rebuild`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "rebuild",
        help="rebuild a projection from the event store into a shadow table, verify, swap",
    )
    p.add_argument(
        "projection", help="projection module:attr, e.g. projections:ProductViewProjection"
    )
    p.add_argument("--verify-only", action="store_true", help="catch up and compare; never swap")
    p.add_argument("--accept", action="store_true", help="swap even if the rows differ")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--aggregate", metavar="ID", help="rebuild one aggregate's rows in place")
    scope.add_argument(
        "--from",
        dest="from_position",
        metavar="POS",
        type=non_negative_int,
        help="replay only events after POS (into a fresh shadow)",
    )
    p.add_argument("--restart", action="store_true", help="drop the shadow instead of resuming")
    p.add_argument(
        "--declared-only",
        action="store_true",
        help="read only the topics of the projection's event_classes",
    )
    p.add_argument("--log", type=log_name, help="log name (default APP_LOG)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=5000,
        help="events per transaction (default 5000)",
    )
    p.set_defaults(func=cmd_rebuild)


def _aggregate(text: str | None) -> UUID | None:
    if text is None:
        return None
    try:
        return UUID(text)
    except ValueError as e:
        msg = f"--aggregate must be an aggregate id (a UUID), got {text!r}"
        raise ConfigurationError(msg) from e


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a rebuild and prints its report."""
    from eventplatform.rebuild.progress import StreamProgress
    from eventplatform.rebuild.rebuild import rebuild
    from eventplatform.rebuild.report import RebuildInterrupted, RebuildOptions

    dsn = settings.require_dsn()
    projection = load_projection(args.projection)
    options = RebuildOptions(
        log=args.log or settings.require_log(),
        batch_size=args.batch_size,
        verify_only=args.verify_only,
        accept=args.accept,
        aggregate=_aggregate(args.aggregate),
        from_position=args.from_position,
        restart=args.restart,
        topics=None,
    )
    if args.declared_only:
        from eventplatform.rebuild.replay import StoredEventDecoder

        topics = StoredEventDecoder(projection.event_classes, log=options.log).topics
        options = dataclasses.replace(options, topics=topics)
    progress = StreamProgress(sys.stderr, bar=sys.stderr.isatty())
    # Ctrl-C / SIGTERM ask the rebuild to stop between batches. A KeyboardInterrupt raised in
    # the middle of a query would leave psycopg's connection mid-command, and the rollback on
    # the way out would then fail with "another command is already in progress", hiding the
    # interrupt behind a database error.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        report = rebuild(dsn, projection, options, progress=progress, stop=stop)
    except (KeyboardInterrupt, RebuildInterrupted):
        print(
            f"rebuild of {projection.name} interrupted: the live read model is untouched; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
