"""`eventplatform demo` shows the whole flow on throwaway servers, as `make demo` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]


def run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventplatform", "--log-level", "WARNING", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def without_app_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("APP_")}


def test_the_demo_runs_from_command_to_read_model_on_throwaway_servers():
    result = run_demo(without_app_variables())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "PostgreSQL  embedded, throwaway" in out
    assert "stored     products:1  Product.Created  v1" in out
    assert "published  events.Product.Discontinued  Nats-Msg-Id=products:5" in out
    assert "projected  product_view: 'Large coffee mug' 11.00 discontinued=True v4" in out
    assert "refused    ProductDiscontinued" in out
    assert "throwaway servers removed" in out


def test_the_demo_uses_configured_servers_when_given(database_dsn, nats_url, unique_name):
    env = without_app_variables()
    env.update(
        APP_DSN=database_dsn,
        APP_NATS_URL=nats_url,
        APP_STREAM=unique_name.upper(),
        APP_SUBJECT_PREFIX=unique_name,
    )
    result = run_demo(env)
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL  APP_DSN" in result.stdout
    assert f"published  {unique_name}.Product.Created" in result.stdout
    assert "throwaway servers removed" not in result.stdout
