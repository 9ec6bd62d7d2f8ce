"""``eventplatform prune --older-than 30d``: drop resolved dead letters and unrouted records.

See :mod:`eventplatform.store.pruning` for what goes and what never does.
"""

from __future__ import annotations

import argparse
from typing import Any

from eventplatform.cli.arguments import duration
from eventplatform.settings import Settings


def add_prune_parser(sub: Any) -> None:
    """Registers ``prune`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "prune",
        help="delete resolved dead letters and unrouted-event records older than an age",
    )
    p.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="AGE",
        help="e.g. 30d, 12h, 90m or 3600s (resolved dead letters: since resolved)",
    )
    p.add_argument("--dry-run", action="store_true", help="count only; delete nothing")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Prunes; prints what went (or would go)."""
    from eventplatform.store.pruning import prune

    report = prune(settings.require_dsn(), older_than=args.older_than, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {report.dead_letters} resolved dead letter(s) and "
        f"{report.unrouted_events} unrouted-event record(s) older than {args.older_than}"
    )
    return 0
