"""``eventplatform dlq``: see, retry and discard dead letters.

``list`` and ``show`` read the table. ``retry`` replays through the consumer's own code, so
it needs that code: ``--consumer module:attr`` names the projection (class or instance) or
the :class:`IdempotentEventHandler` instance. A retried message goes through the same
idempotency as live traffic (the handler's event-id marker; for a projection, the parked rows
it deletes in the same transaction), so retrying twice changes nothing more.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from eventplatform.cli.arguments import positive_int
from eventplatform.cli.loader import load
from eventplatform.consumers.dead_letters import DeadLetter, PostgresDeadLetters
from eventplatform.consumers.handlers import IdempotentEventHandler, retry_dead_letter
from eventplatform.consumers.parking import PostgresParking, discard, release
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.verification import StoreVerifier
from eventplatform.errors import ConfigurationError, EventPlatformError
from eventplatform.settings import Settings
from eventplatform.store.postgres import connect
from eventplatform.store.schema import DEAD_LETTERS

_STATUSES = ("open", "retried", "discarded")
#: Dead letters ``retry --all`` reads per query (ids only: bodies are loaded one at a time).
RETRY_PAGE = 500


def add_dlq_parser(sub: Any) -> None:
    """Registers ``dlq`` and its actions on the CLI's sub-parsers."""
    p = sub.add_parser("dlq", help="list, show, retry or discard dead letters")
    actions = p.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")

    a = actions.add_parser("list", help="dead letters, oldest first (default: open ones)")
    a.add_argument("--consumer", help="only this projection/handler name")
    a.add_argument("--status", choices=[*_STATUSES, "all"], default="open")
    a.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many (default 100)"
    )
    a.add_argument("--json", action="store_true", help="print JSON")

    a = actions.add_parser("show", help="one dead letter in full, with its message body")
    a.add_argument("id", type=int)
    a.add_argument("--json", action="store_true", help="print JSON")

    a = actions.add_parser("retry", help="replay dead letters through the fixed consumer")
    target = a.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?", help="the dead letter's id")
    target.add_argument("--all", action="store_true", help="every open one of --consumer")
    a.add_argument(
        "--consumer",
        required=True,
        help="module:attr of the Projection or IdempotentEventHandler that owns them",
    )

    a = actions.add_parser("discard", help="mark a dead letter as needing nothing")
    a.add_argument("id", type=int)
    a.add_argument("--force", action="store_true", help="also drop the events parked behind it")
    p.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a ``dlq`` action; returns the exit status."""
    dsn = settings.require_dsn()
    with connect(dsn) as conn:
        conn.autocommit = True
        action: str = args.dlq_action
        if action == "list":
            return _list(conn, args)
        if action == "show":
            return _show(conn, args.id, as_json=args.json)
        if action == "retry":
            return _retry(conn, args, StoreVerifier(settings.event_verification))
        return _discard(conn, args.id, force=args.force)


def _list(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    statuses = _STATUSES if args.status == "all" else (args.status,)
    with conn.cursor() as cur:
        letters = PostgresDeadLetters().find(
            cur, consumer=args.consumer, statuses=statuses, limit=args.limit
        )
    if args.json:
        print(json.dumps([_summary(d) for d in letters], indent=2))
        return 0
    if not letters:
        print(f"no {args.status if args.status != 'all' else ''} dead letters".replace("  ", " "))
        return 0
    print(f"{'id':>6}  {'consumer':<20} {'status':<9} {'tries':>5}  {'aggregate':<36}  error")
    for d in letters:
        mark = " (parked)" if d.parked and d.status == "open" else ""
        print(
            f"{d.id:>6}  {d.consumer:<20} {d.status:<9} {d.attempts:>5}  "
            f"{(d.aggregate or '-'):<36}  {_one_line(d.error, 60)}{mark}"
        )
    return 0


def _show(conn: psycopg.Connection[Any], dead_letter_id: int, *, as_json: bool) -> int:
    with conn.cursor() as cur:
        letter = PostgresDeadLetters().get(cur, dead_letter_id)
        behind = (
            PostgresParking().count(cur, letter.consumer).get(letter.aggregate, 0)
            if letter is not None and letter.parked and letter.aggregate
            else 0
        )
    if letter is None:
        msg = f"no dead letter with id {dead_letter_id}"
        raise EventPlatformError(msg)
    details = {**_summary(letter), "parked_behind": behind, "body": _body_text(letter.body)}
    if as_json:
        print(json.dumps(details, indent=2))
        return 0
    for key, value in details.items():
        if key != "body":
            print(f"{key + ':':<15} {value}")
    print("body:")
    print(details["body"])
    return 0


def _retry(conn: psycopg.Connection[Any], args: argparse.Namespace, verifier: StoreVerifier) -> int:
    consumer = _consumer(args.consumer)
    ids = _open_ids(conn, consumer.name, RETRY_PAGE) if args.all else iter([args.id])
    failed = seen = 0
    for dead_letter_id in ids:
        seen += 1
        try:
            if isinstance(consumer, Projection):
                result = release(conn, consumer, dead_letter_id, verifier=verifier)
                outcome, count = result.status, result.applied
            else:
                outcome = retry_dead_letter(conn, consumer, dead_letter_id, verifier=verifier)
                count = 1
        except EventPlatformError as e:
            failed += 1
            print(f"dead letter {dead_letter_id}: still fails: {e}")
            continue
        if outcome == "not open":
            print(f"dead letter {dead_letter_id}: not open (already retried or discarded)")
        elif outcome == "duplicate":
            print(f"dead letter {dead_letter_id}: had already been processed; marked retried")
        else:
            print(f"dead letter {dead_letter_id}: applied ({count} event(s)) by {consumer.name}")
    if args.all and not seen:
        print(f"no open dead letters for {consumer.name}")
    return 1 if failed else 0


def _open_ids(conn: psycopg.Connection[Any], consumer: str, page: int) -> Iterator[int]:
    """The ids of ``consumer``'s open dead letters, oldest first, read ``page`` at a time.

    Only those that exist when it starts (a retry that fails again stays open and is not met
    twice; new ones arriving meanwhile wait for the next run), and only their ids: each
    retry loads its own row, so memory does not grow with the number of dead letters.
    """
    table = sql.Identifier(DEAD_LETTERS)
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(id), 0) FROM {} WHERE consumer = %s").format(table),
        (consumer,),
    ).fetchone()
    ceiling = int(row[0]) if row else 0
    after = 0
    while True:
        ids = [
            int(r[0])
            for r in conn.execute(
                sql.SQL(
                    "SELECT id FROM {} WHERE consumer = %s AND status = 'open'"
                    " AND id > %s AND id <= %s ORDER BY id LIMIT %s"
                ).format(table),
                (consumer, after, ceiling, page),
            ).fetchall()
        ]
        if not ids:
            return
        yield from ids
        after = ids[-1]


def _discard(conn: psycopg.Connection[Any], dead_letter_id: int, *, force: bool) -> int:
    result = discard(conn, dead_letter_id, force=force)
    if result.status == "refused":
        print(
            f"dead letter {dead_letter_id} holds {result.parked} parked event(s) of its "
            "aggregate: 'dlq retry' it after a fix, or 'dlq discard --force' to drop them too"
        )
        return 1
    if result.status == "not open":
        print(f"dead letter {dead_letter_id}: not open (already retried or discarded)")
        return 0
    dropped = f", dropped {result.parked} parked event(s)" if result.parked else ""
    print(f"dead letter {dead_letter_id}: discarded{dropped}")
    return 0


def _consumer(reference: str) -> Projection | IdempotentEventHandler:
    obj = load(reference, what="consumer")
    if isinstance(obj, type) and issubclass(obj, Projection):
        try:
            return obj()
        except TypeError as e:
            msg = f"cannot instantiate projection {reference!r} without arguments: {e}"
            raise ConfigurationError(msg) from e
    if isinstance(obj, Projection | IdempotentEventHandler):
        return obj
    msg = f"{reference!r} is neither a Projection nor an IdempotentEventHandler"
    raise ConfigurationError(msg)


def _summary(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "consumer": d.consumer,
        "status": d.status,
        "parked": d.parked,
        "attempts": d.attempts,
        "subject": d.subject,
        "message_id": d.message_id,
        "event_id": d.event_id,
        "log": d.log,
        "aggregate": d.aggregate,
        "sequence": d.sequence,
        "error": d.error,
        "created_at": d.created_at.isoformat(),
        "resolved_at": d.resolved_at.isoformat() if d.resolved_at else None,
        "headers": d.headers,
    }


def _body_text(body: bytes, limit: int = 4000) -> str:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = f"(not UTF-8, {len(body)} bytes) {body[:limit]!r}"
    return text if len(text) <= limit else text[:limit] + f"... ({len(body)} bytes)"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
