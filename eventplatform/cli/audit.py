"""``eventplatform audit``: compare the stream with the event store; republish what is missing.

Exit status: 0 when the stream holds every audited log exactly (after ``--repair``: when what
was wrong is repaired); 1 when events are missing, extra, duplicated or out of order (out of
order stays 1 after a repair: run the printed rebuilds); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import asdict
from typing import Any

from eventplatform.cli.loader import load_projection
from eventplatform.settings import Settings

logger = logging.getLogger(__name__)

#: Messages between two progress lines on the log.
_PROGRESS_EVERY = 200_000


def add_audit_parser(sub: Any) -> None:
    """Registers ``audit`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "audit",
        help="compare the stream with the event store: missing, extra, duplicated, out of order",
    )
    p.add_argument(
        "--log", action="append", help="log name (repeatable; default APP_LOG, else every log)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--repair",
        action="store_true",
        help="republish missing (and now fitting oversized) events at the stream's end under"
        " the relay's lease, and print the rebuilds the projections need",
    )
    p.add_argument(
        "--delete-extra",
        action="store_true",
        help="delete the messages that claim a log without carrying its stored events",
    )
    p.add_argument(
        "--projection",
        action="append",
        default=[],
        metavar="M:A",
        help="a projection module:attr, so its rebuild commands are printed exactly (repeatable)",
    )
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """Audits the stream, optionally repairs it, and prints what it found."""
    from eventplatform.cli.status import read_status

    dsn = settings.require_dsn()
    logs: list[str] = args.log or (
        [settings.log] if settings.log else [log.log for log in read_status(dsn, None).logs]
    )
    refs = {load_projection(ref).name: ref for ref in args.projection}
    outcome = asyncio.run(_run(settings, dsn, logs, args.repair, args.delete_extra))
    if args.json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        _print(outcome, refs)
    return 0 if outcome["ok"] else 1


async def _run(
    settings: Settings, dsn: str, logs: list[str], repair: bool, delete_extra: bool
) -> dict[str, Any]:
    from eventplatform.leases.leadership import PostgresLeases
    from eventplatform.messagebus.nats_broker import NatsBroker
    from eventplatform.relay.audit import audit_stream
    from eventplatform.relay.event_log import PostgresEventLog
    from eventplatform.relay.positions import PostgresRelayPositions
    from eventplatform.relay.repair import delete_messages, rebuild_targets, republish
    from eventplatform.relay.routing import DefaultTopicMapper
    from eventplatform.store.postgres import connect_async

    def progress(read: int, total: int) -> None:
        if read // _PROGRESS_EVERY != (read - 1) // _PROGRESS_EVERY or read == total:
            logger.info("audit: %d of %d messages read", read, total)

    async with (
        NatsBroker.from_settings(settings, name="eventplatform-audit") as broker,
        await connect_async(dsn, "opening the audit's connection") as conn,
        await connect_async(dsn, "opening the audit's lease connection") as lease_conn,
    ):
        readers = {log: PostgresEventLog(conn, conn, log) for log in logs}
        positions = PostgresRelayPositions(conn)
        audit = await audit_stream(
            broker.nc,
            broker.js,
            settings.stream,
            list(readers.values()),
            positions,
            progress=progress,
        )
        outcome = audit.as_dict()
        outcome["repairs"] = []
        outcome["rebuilds"] = {}
        outcome["deleted"] = 0
        if delete_extra:
            seqs = [seq for log in audit.logs for seq in log.extra.keys]
            outcome["deleted"] = await delete_messages(broker.js, settings.stream, seqs)
        remaining = 0
        for log in audit.logs:
            reader = readers[log.log]
            fixed: set[int] = set()
            if repair:
                late = list(log.out_of_order.keys)
                if log.missing or log.oversized:
                    report = await republish(
                        broker.nc,
                        broker.js,
                        settings.stream,
                        reader,
                        [*log.missing, *log.oversized],
                        leases=PostgresLeases(lease_conn),
                        positions=positions,
                        mapper=DefaultTopicMapper(settings.subject_prefix),
                        lease_ttl=settings.relay_lease_ttl,
                    )
                    outcome["repairs"].append(asdict(report))
                    fixed = {*report.republished, *report.present}
                    late += report.republished
                targets = await rebuild_targets(conn, reader, late)
                outcome["rebuilds"][log.log] = [asdict(t) for t in targets]
            remaining += sum(1 for n in log.missing if n not in fixed)
            remaining += 0 if delete_extra else log.extra.count
            remaining += log.duplicated.count + log.out_of_order.count
        outcome["ok"] = remaining == 0
        return outcome


def _print(outcome: dict[str, Any], refs: dict[str, str]) -> None:
    print(
        f"stream {outcome['stream']}: {outcome['messages']} message(s), sequences"
        f" {outcome['first_seq']}..{outcome['last_seq']}, read in {outcome['seconds']:.1f} s"
    )
    for log in outcome["logs"]:
        name = log["log"]
        print(
            f"\nlog {name}: head {log['head']}, relay at {log['relay_position']},"
            f" {log['in_stream']} of its events in the stream"
        )
        missing = log["missing"]
        print(f"  missing       {missing['count']:>6}  {_ids(missing['listed'])}")
        print(f"  extra         {log['extra']['count']:>6}")
        for extra in log["extra"]["listed"][:10]:
            print(
                f"      seq {extra['seq']} claims {name}:{extra['claimed']}: {extra['reason']}"
                f" ({extra['verdict']})"
            )
        for kind, label in (("duplicated", "duplicated"), ("out_of_order", "out of order")):
            listed = ", ".join(
                f"{name}:{p['notification']} at seq {p['seq']}" for p in log[kind]["listed"][:10]
            )
            print(f"  {label:<13} {log[kind]['count']:>6}  {listed}")
        print(f"  republished   {log['republished']['count']:>6}  (by audit --repair, on purpose)")
        print(
            f"  skipped       {log['unrouted']:>6} unrouted, {len(log['oversized'])} oversized"
            " (recorded by the relay, never published)"
        )
        if log["not_checked_below"]:
            print(
                f"  not checked   events below {log['not_checked_below']}: the stream no longer"
                " holds messages that old (retention)"
            )
    print(f"\nmessages of other logs or without a message id: {outcome['other']}")
    if outcome["deleted"]:
        print(f"deleted {outcome['deleted']} extra message(s)")
    for report in outcome["repairs"]:
        _print_repair(outcome["stream"], report)
    for log, targets in outcome["rebuilds"].items():
        _print_rebuilds(log, targets, refs)
    if not outcome["repairs"] and not outcome["ok"]:
        for log in outcome["logs"]:
            if log["missing"]["count"] or log["oversized"] or log["out_of_order"]["count"]:
                print(
                    f"\nrun `eventplatform audit --log {log['log']} --repair` to republish the"
                    " missing events and see the rebuilds the projections need"
                )
            if log["extra"]["count"]:
                print(
                    f"`eventplatform audit --log {log['log']} --delete-extra` deletes the extra"
                    " messages; find who publishes on the event subjects"
                )
    print("\nresult: " + ("ok" if outcome["ok"] else "PROBLEMS FOUND"))


def _print_repair(stream: str, report: dict[str, Any]) -> None:
    log = report["log"]
    print(
        f"\nrepair of {log}: republished {len(report['republished'])} event(s) at the end of"
        f" {stream} ({len(report['present'])} already there, {len(report['held'])} held,"
        f" {len(report['too_large'])} still too large, {len(report['unrouted'])} unrouted)"
    )
    for notification, seq in report["held"]:
        print(
            f"  {log}:{notification} not published: JetStream took it for the message at seq"
            f" {seq}, which is not it; its id is still in the duplicate window: run again later"
        )
    for notification in report["too_large"]:
        print(f"  {log}:{notification} is still larger than the server's max_payload")


def _print_rebuilds(log: str, targets: list[dict[str, Any]], refs: dict[str, str]) -> None:
    if not targets:
        return
    print(
        f"\nprojections of {log} that had passed these events skip them; rebuild the aggregates"
        " (idempotent handlers de-duplicate by event id and need nothing):"
    )
    for target in targets:
        name = target["projection"]
        ref = refs.get(name, f"<module:attr of {name}>")
        print(f"  # {name} (at {target['position']})")
        for aggregate in target["aggregates"]:
            print(f"  eventplatform rebuild {ref} --log {log} --aggregate {aggregate}")


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(n) for n in ids[:20])
    return shown + (" ..." if len(ids) > 20 else "")
