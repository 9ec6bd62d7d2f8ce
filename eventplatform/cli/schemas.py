"""``eventplatform schemas TARGET... --out DIR | --check DIR``: the published event contract.

``--out`` writes a JSON Schema of ``data`` per event type and version into DIR (schemas of
older versions already there stay: events stored as those versions are still published as
them). ``--check`` compares the event classes with the schemas in DIR and exits 1 naming every
change that breaks their consumers, unless the event was versioned with an upcaster.

Exit status: 0 when written or compatible; 1 on a breaking change; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eventplatform.cli.loader import load_target
from eventplatform.errors import ConfigurationError
from eventplatform.settings import Settings


def add_schemas_parser(sub: Any) -> None:
    """Registers ``schemas`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "schemas",
        help="export the JSON Schema of every event type, or check compatibility with them",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="module or module:attr holding the event classes (aggregates, events), e.g. domain",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, metavar="DIR", help="write the schemas into DIR")
    what.add_argument(
        "--check", type=Path, metavar="DIR", help="fail on changes that break DIR's schemas"
    )
    p.set_defaults(func=cmd_schemas)


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    """Exports or checks the event schemas."""
    from eventplatform.messagebus import schemas

    classes: dict[type[Any], None] = {}
    for target in args.targets:
        found = schemas.event_classes_in(load_target(target, what="event classes"))
        if not found:
            msg = f"{target!r} holds no event classes (aggregates or their events)"
            raise ConfigurationError(msg)
        classes.update(dict.fromkeys(found))
    if args.out is not None:
        for path in schemas.export(classes, args.out):
            print(f"wrote {path}")
        return 0
    if not args.check.is_dir():
        msg = f"--check {args.check}: no such directory (export with --out first)"
        raise ConfigurationError(msg)
    result = schemas.check(classes, args.check)
    for line in result.new:
        print(f"new, not yet published: {line}")
    for line in result.problems:
        print(f"BREAKING: {line}")
    if result.problems:
        print(f"{len(result.problems)} breaking change(s) against {args.check}")
        return 1
    print(f"compatible with {args.check}")
    return 0
