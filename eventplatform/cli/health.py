"""``eventplatform health``: can this process's configuration reach what it needs, right now?

A probe for container healthchecks and operators: it connects to PostgreSQL (``SELECT 1``) and to
NATS with exactly the credentials and TLS the workers use, and with ``--stream`` checks that the
event stream exists (the relay creates it). One line per check, credentials masked; exit status
0 when every check passed, 1 otherwise. Each check gives up after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import nats.errors
import nats.js.errors

from eventplatform.cli.arguments import positive_seconds
from eventplatform.errors import EventPlatformError
from eventplatform.messagebus.nats_broker import NatsBroker
from eventplatform.settings import Settings
from eventplatform.store.postgres import connect


def add_health_parser(sub: Any) -> None:
    """Registers ``health`` on the CLI's sub-parsers."""
    p = sub.add_parser("health", help="check that PostgreSQL and NATS answer (exit 0) or not (1)")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL check")
    p.add_argument("--no-nats", action="store_true", help="skip the NATS check")
    p.add_argument("--stream", action="store_true", help="also require the event stream")
    p.add_argument(
        "--timeout", type=positive_seconds, default=3.0, help="seconds per check (default 3)"
    )
    p.set_defaults(func=cmd_health)


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the checks; prints ``ok``/``FAIL`` per check."""
    results: list[tuple[str, str | None]] = []
    if not args.no_postgres:
        results.append(("postgresql", _postgres(settings, args.timeout)))
    if not args.no_nats:
        results.append(("nats", asyncio.run(_nats(settings, args.timeout, stream=args.stream))))
    for name, problem in results:
        print(f"{name:<11} {'ok' if problem is None else 'FAIL ' + problem}")
    return 1 if any(problem is not None for _, problem in results) else 0


def _postgres(settings: Settings, timeout: float) -> str | None:
    try:
        with connect(settings.require_dsn(), connect_timeout=max(1, round(timeout))) as conn:
            conn.execute("SELECT 1")
    except EventPlatformError as e:
        return str(e)
    return None


async def _nats(settings: Settings, timeout: float, *, stream: bool) -> str | None:
    broker = NatsBroker.from_settings(settings, name="health")
    try:
        async with asyncio.timeout(timeout * 2):
            await broker.connect()
            if stream:
                await broker.js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        return f"stream {settings.stream!r} does not exist (yet): the relay creates it"
    except TimeoutError:
        return f"no answer within {timeout * 2:g}s"
    except (EventPlatformError, nats.errors.Error, OSError) as e:
        return str(e)
    finally:
        await broker.close()
    return None
