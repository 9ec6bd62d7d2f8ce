"""``python -m benchmarks [--quick] [--json FILE] [--plot FILE.png]``.

Starts a throwaway PostgreSQL and NATS (``eventplatform.testing.embedded``) unless ``APP_DSN`` and
``APP_NATS_URL`` are set, runs every figure beside its baselines, prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from benchmarks import (
    latency,
    memory,
    observability,
    partitions,
    projection,
    rebuild,
    relay,
    report,
    write,
    write_concurrency,
)
from benchmarks.harness import FULL, QUICK, Result, Scale

FIGURES: dict[str, Callable[[str, str, Scale], list[Result]]] = {
    "write": write.run,
    "write-concurrency": write_concurrency.run,
    "relay": relay.run,
    "projection": projection.run,
    "latency": latency.run,
    "rebuild": rebuild.run,
    "memory": memory.run,
    "observability": observability.run,
    "partitions": partitions.run,
}


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """The configured servers, or throwaway embedded ones for the run."""
    dsn, url = os.environ.get("APP_DSN"), os.environ.get("APP_NATS_URL")
    with contextlib.ExitStack() as stack:
        if not dsn:
            from eventplatform.testing.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn
        if not url:
            from eventplatform.testing.embedded import EmbeddedNats

            url = stack.enter_context(EmbeddedNats()).url
        yield dsn, url


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Every figure beside its physical limit and its peers, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (< 2 min on 2 cores)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="PNG bar chart of ratios")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the sizes (e.g. 0.05 for a smoke run)"
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(FIGURES), help="run only this figure (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks; returns 0 (missed targets are reported, not failures)."""
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    scale = (QUICK if args.quick else FULL).scaled(args.scale)
    mode = ("quick" if args.quick else "full") + (f" x{args.scale:g}" if args.scale != 1 else "")
    names = args.only or list(FIGURES)
    started = time.monotonic()
    results: list[Result] = []
    with servers() as (dsn, url):
        for name in names:
            t = time.monotonic()
            print(f"{name} ...", end="", flush=True, file=sys.stderr)
            results.extend(FIGURES[name](dsn, url, scale))
            print(f" {time.monotonic() - t:.1f}s", file=sys.stderr)
        info = report.machine(dsn, url, mode, time.monotonic() - started)
    print(report.table(results))
    if args.json:
        report.write_json(args.json, info, results)
    if args.plot:
        report.plot(args.plot, results, f"eventplatform ratios, {mode} run, {info['cpus']} cpus")
    return 0


if __name__ == "__main__":
    sys.exit(main())
