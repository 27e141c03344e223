"""`ivle-maint plan` and the new version's migrations (issue 23).

Before an upgrade the migrations on disk are the old version's, so a plan
read from them says 0 pending.  The plan says which files it read, and
reads the new package's own manifest (dh_ivle_maint's, in its preinst)
when given one: here the preinst of a package really built by
dpkg-buildpackage with the add-on, handed over as an operator would
(`dpkg-deb --info ivle_NEW.deb preinst | ivle-maint plan ... --new-migrations -`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.dh_addon import build
from support.upgrade_helpers import REPO, at_version_1_0, cli, media_version

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]
needs_debhelper = pytest.mark.skipif(shutil.which("dh") is None, reason="needs debhelper")

# Refused by the migration checks: it cannot run inside a transaction.
BROKEN = {"20100401-01.sql": "CREATE INDEX CONCURRENTLY login_nick_idx ON login (nick);\n"}


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    """ivle 9.9 built with dh_ivle_maint: with 1.1's migrations, and with a broken one."""
    built = {}
    for label, files in (("good", {**OLD, **NEW}), ("broken", {**OLD, **NEW, **BROKEN})):
        tmp = tmp_path_factory.mktemp(label)
        done, _ = build(tmp, {name: text.encode() for name, text in files.items()})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        built[label] = tmp / "ivle_9.9_all.deb"
    return built


@pytest.fixture
def both(node_factory):
    return at_version_1_0(node_factory(users=2, consoles=0, role="both"))


def preinst_of(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--info", str(deb), "preinst"], capture_output=True,
                          text=True, check=True).stdout


def plan(node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ivle_maint", "plan", "--from", "1.0",
                           "--to", "1.1", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=300, check=False)


def unchanged(node) -> bool:
    return (node.service_running("apache2") and not (node.state_dir / "journal").exists()
            and media_version(node) == "1.0")


def test_without_the_new_migrations_the_plan_says_what_it_read(both):
    done = cli(both, "plan", "--from", "1.0", "--to", "1.1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pending = next(i for i, line in enumerate(lines) if line.startswith("pending migrations"))
    assert lines[pending] == f"pending migrations in {both.migrations}: 0"
    assert lines[pending + 1] == (
        "  (read [paths] migrations, the installed version's files; 1.1's may add more: give "
        "--new-migrations with its package's preinst, or --migrations DIR)")
    assert unchanged(both)


@needs_debhelper
def test_the_plan_reads_the_new_packages_preinst(both, debs):
    done = plan(both, "--new-migrations", "-", stdin=preinst_of(debs["good"]))
    assert done.returncode == 0, done.stderr
    assert "baseline records the 2 migrations of 1.0 as applied" in done.stdout
    assert ("pending migrations in ivle 9.9's manifest (stdin): 3\n  20100201-01 "
            "(own-transaction)\n  20100201-02 ") in done.stdout
    assert "20100215" in done.stdout and "read [paths] migrations" not in done.stdout
    assert "ivle-maint-plan-" not in done.stdout  # the temporary copy is not named
    assert unchanged(both)


@needs_debhelper
def test_the_preinst_as_a_file_and_a_broken_migration_in_it(both, debs, tmp_path):
    preinst = tmp_path / "preinst"
    preinst.write_text(preinst_of(debs["broken"]))
    done = plan(both, "--new-migrations", str(preinst))
    assert done.returncode == 0, done.stderr
    blocked = [line for line in done.stdout.splitlines() if "blocked" in line]
    assert blocked and "20100401-01" in blocked[0] and "transaction" in blocked[0], done.stdout
    assert "ivle-maint-plan-" not in done.stdout
    assert unchanged(both)


def test_a_preinst_without_a_manifest_is_one_line(both):
    done = plan(both, "--new-migrations", "-", stdin="#!/bin/sh\nset -e\nexit 0\n")
    assert done.returncode != 0
    assert "without dh_ivle_maint's migrations manifest" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert unchanged(both)


def test_the_plan_shows_the_release_class_and_what_decided_it(both):
    staged = both.root / "staged-classes"
    staged.mkdir()
    locking = {"20100301-01.sql": "CREATE INDEX login_nick_idx ON login (nick);\n"}
    for name, text in {**OLD, **NEW, **locking}.items():
        (staged / name).write_text(text)
    done = plan(both, "--migrations", str(staged))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("release class: "))
    assert lines[at].startswith("release class: locking (additive: the old code keeps working")
    assert lines[at + 1].startswith("  decided by 20100301-01  locking      line 1: CREATE "
                                    "INDEX on login without CONCURRENTLY")
    assert "CREATE INDEX CONCURRENTLY in a file whose header says" in lines[at + 1]
    assert sum("decided by" in line for line in lines) == 1
    assert unchanged(both)
