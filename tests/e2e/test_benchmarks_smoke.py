"""The benchmark harness runs end to end on a tiny configuration and reports every figure.

Performance is not asserted here (benchmarks/ reports it); only that every figure is measured
beside its baseline and comes out as a finite positive number and ratio.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import parse

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    *("write", "write-concurrency", "relay", "projection"),
    *("latency", "rebuild", "memory", "partitions", "observability"),
}


@pytest.mark.e2e
def test_a_tiny_run_measures_every_figure_beside_its_baseline(
    postgres_dsn: str, nats_url: str, tmp_path: Path
) -> None:
    out, png = tmp_path / "results.json", tmp_path / "ratios.png"
    env = {**os.environ, "APP_DSN": postgres_dsn, "APP_NATS_URL": nats_url}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--scale", "0.03"),
            *("--json", str(out), "--plot", str(png)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    figures = report["figures"]
    assert {f["name"] for f in figures} == FIGURES
    for f in figures:
        for key in ("value", "baseline_value", "ratio"):
            assert math.isfinite(f[key]), (f["name"], f["baseline"], key, f[key])
            assert f[key] > 0, (f["name"], f["baseline"], key, f[key])
        assert f["baseline"]
    latency = next(f for f in figures if f["name"] == "latency")
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    writers = [f["writers"] for f in figures if f["name"] == "write-concurrency"]
    assert writers == [1, 4, 12]
    outbox = next(f for f in figures if f["baseline"] == "polling_outbox")
    assert outbox["limit_allows"] > 0  # what raw publish_async itself reached over the outbox
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "| relay |" in done.stdout


def test_a_non_positive_scale_is_refused_naming_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["--scale", "0"])
    assert exit_info.value.code == 2
    assert "--scale must be positive, got 0.0" in capsys.readouterr().err
