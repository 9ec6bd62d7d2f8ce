"""Output: the terminal table, the JSON file, the PNG bar chart of ratios."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import Result
from benchmarks.png import Canvas


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


GREEN, RED, GREY, BLACK = (46, 139, 87), (200, 50, 50), (150, 150, 150), (0, 0, 0)
_LOW, _HIGH = -3.0, 2.0  # log10 range of the ratio axis


def _label(r: Result) -> str:
    if r.name in ("write", "memory"):
        return f"{r.name} {r.variant.split(',')[0]} / {r.baseline}"[:45]
    return f"{r.name} / {r.baseline}"[:45]


def plot(path: Path, results: list[Result], title: str) -> None:
    """A horizontal bar chart of ratios on a log axis; the black tick is each target."""
    left, right, top, bar_h, gap = 560, 150, 60, 22, 12
    axis_w = 600
    width = left + axis_w + right
    height = top + len(results) * (bar_h + gap) + 50
    canvas = Canvas(width, height)
    canvas.text(10, 15, title, size=2)

    def x_of(ratio: float) -> int:
        value = min(max(math.log10(max(ratio, 1e-9)), _LOW), _HIGH)
        return left + round((value - _LOW) / (_HIGH - _LOW) * axis_w)

    for decade in range(int(_LOW), int(_HIGH) + 1):
        x = x_of(10.0**decade)
        canvas.rect(x, top - 8, 1, len(results) * (bar_h + gap), GREY)
        label = f"{10.0**decade:g}"
        canvas.text(x - len(label) * 6, height - 40, label, GREY, size=2)
    canvas.text(left, height - 20, "RATIO OURS / BASELINE (LOG)", GREY, size=2)
    for i, r in enumerate(results):
        y = top + i * (bar_h + gap)
        canvas.text(10, y + 4, _label(r), BLACK, size=2)
        x0, x1 = x_of(1.0), x_of(r.ratio)
        canvas.rect(min(x0, x1), y, max(abs(x1 - x0), 2), bar_h, GREEN if r.met else RED)
        canvas.rect(x_of(r.goal) - 1, y - 3, 3, bar_h + 6, BLACK)
        canvas.text(left + axis_w + 10, y + 4, f"{r.ratio:.3g}", BLACK, size=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
