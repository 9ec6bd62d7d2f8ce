"""Run as root, the throwaway PostgreSQL changes nothing outside its own temp dir.

PostgreSQL refuses to run as root, so it runs as ``nobody``. That must not cost the machine
anything: no parent directory of the install or of the temp dir is loosened (a 0700 home once
became 0755), and no system user is created.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from eventplatform.testing.embedded import EmbeddedPostgres, find_postgres_bin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="only a root run hands the server to nobody"),
]


def modes_of(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def outside_modes(install: Path) -> dict[Path, int]:
    """Modes of every parent of the install, of its files, and of the temp root's parents."""
    paths = [install, *install.parents, *sorted(install.rglob("*"))[:200]]
    temp_root = Path(os.environ.get("TMPDIR", "/tmp"))
    paths += [temp_root, *temp_root.parents]
    return modes_of([p for p in paths if not p.is_symlink()])


def users() -> set[str]:
    return {entry.pw_name for entry in pwd.getpwall()}


def started_and_answering(pg: EmbeddedPostgres) -> str:
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_starting_as_root_loosens_no_permission_and_creates_no_user():
    bin_dir = find_postgres_bin()
    assert bin_dir is not None
    before, users_before = outside_modes(bin_dir.parent), users()
    with EmbeddedPostgres() as pg:
        assert started_and_answering(pg) == "postgres"
        during = outside_modes(bin_dir.parent)
    assert during == before
    assert outside_modes(bin_dir.parent) == before
    assert users() == users_before


def test_an_install_under_a_private_directory_is_copied_into_the_temp_dir_not_opened(tmp_path):
    bin_dir = find_postgres_bin()
    assert bin_dir is not None
    private = tmp_path / "private-home"
    private.mkdir(mode=0o700)
    # The wheel's layout: site-packages/pgserver/pginstall/bin and site-packages/pgserver.libs.
    package = bin_dir.parent.parent
    install = private / package.name / bin_dir.parent.name
    shutil.copytree(bin_dir.parent, install, symlinks=True)
    for libs in package.parent.glob(f"{package.name}.libs"):
        shutil.copytree(libs, private / libs.name)
    before = outside_modes(install / "bin")
    with EmbeddedPostgres(bin_dir=install / "bin") as pg:
        assert started_and_answering(pg) == "postgres"
        assert pg.bin_dir.is_relative_to(pg.workdir), "the copy inside the temp dir is run"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert outside_modes(install / "bin") == before
