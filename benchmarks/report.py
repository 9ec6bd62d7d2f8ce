"""Output: the terminal table, the JSON file, the PNG bar chart of ratios."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import Result


def machine(dsn: str, nats_url: str, mode: str, seconds: float) -> dict[str, Any]:
    """Where and how the run happened."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgres": row[0] if row else "?",
        "postgres_fsync": fsync[0] if fsync else "?",
        "postgres_synchronous_commit": sync_commit[0] if sync_commit else "?",
        "nats_py": metadata.version("nats-py"),
        "eventsourcing": metadata.version("eventsourcing"),
        "mode": mode,
        "seconds": round(seconds, 1),
    }


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def table(results: list[Result]) -> str:
    """A Markdown table (readable on a terminal, pasteable into the README)."""
    lines = [
        "| figure | variant | ours | baseline | baseline value | ratio | target | met |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for r in results:
        ours = f"{_number(r.value)} {r.unit}"
        if r.name == "latency":
            ours = f"p50 {r.extra['p50_ms']} / p99 {r.extra['p99_ms']} / max {r.extra['max_ms']} ms"
        theirs = f"{_number(r.baseline_value)} {r.unit}"
        if r.name == "latency":
            theirs = (
                f"p50 {r.extra['baseline_p50_ms']} / p99 {r.extra['baseline_p99_ms']}"
                f" / max {r.extra['baseline_max_ms']} ms"
            )
        lines.append(
            f"| {r.name} | {r.variant} | {ours} | {r.baseline} | {theirs} | {r.ratio:.3g} |"
            f" {r.target} | {'yes' if r.met else '**no**'} |"
        )
    return "\n".join(lines)


def write_json(path: Path, info: dict[str, Any], results: list[Result]) -> None:
    """The issue's JSON shape: machine, then one figure entry per pair."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"machine": info, "figures": [r.as_json() for r in results]}
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


_LOW, _HIGH = -3.0, 2.0  # log10 range of the ratio axis


def _label(r: Result) -> str:
    if r.name == "write-concurrency":
        n = r.extra["writers"]
        return f"write, {n} writer thread{'s' if n > 1 else ''} / raw per thread"[:45]
    if r.name in ("write", "memory"):
        return f"{r.name} {r.variant.split(',')[0]} / {r.baseline}"[:45]
    return f"{r.name} / {r.baseline}"[:45]


def plot(path: Path, results: list[Result], title: str) -> None:
    """A horizontal bar chart of ratios on a log axis; the black tick is each target, a grey
    cross the most the physical limit itself reached over the same peer (relay vs outbox).

    Needs matplotlib (``pip install eventplatform[bench]``); drawn with the Agg backend, so no
    display is needed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [_label(r) for r in results]
    ratios = [max(r.ratio, 1e-9) for r in results]
    figure, axes = pyplot.subplots(figsize=(11, 0.45 * len(results) + 1.5))
    try:
        rows = range(len(results))
        axes.barh(
            rows,
            [r - 1.0 for r in ratios],
            left=1.0,
            color=["#2e9e4f" if r.met else "#d33c3c" for r in results],
            height=0.6,
        )
        axes.scatter([r.goal for r in results], rows, marker="|", s=300, color="black", zorder=3)
        limits = [
            (row, r.extra["limit_allows"])
            for row, r in enumerate(results)
            if "limit_allows" in r.extra
        ]
        if limits:  # the most any relay could reach over the outbox in this run
            axes.scatter(
                [limit for _, limit in limits],
                [row for row, _ in limits],
                marker="x",
                s=80,
                color="grey",
                zorder=3,
            )
        for row, ratio in zip(rows, ratios, strict=True):
            axes.annotate(f"{ratio:.3g}", (ratio, row), xytext=(4, -4), textcoords="offset points")
        axes.set_xscale("log")
        axes.set_xlim(10.0**_LOW, 10.0**_HIGH)
        axes.set_yticks(list(rows), labels)
        axes.invert_yaxis()
        axes.axvline(1.0, color="grey", linewidth=0.8)
        axes.set_xlabel(
            "ratio ours / baseline (log); black tick: target; grey x: the limit's own ratio"
        )
        axes.set_title(title)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        pyplot.close(figure)
