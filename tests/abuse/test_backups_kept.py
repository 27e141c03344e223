"""Database dumps under faults: a full backup disk, a run killed during
pg_dump, a damaged record of the pinned dumps.  (Which dumps rotation
keeps, retries and clock jumps included: test_clock.py.)

Each case: a one-line error, the documented exit status, nothing
half-written (no .partial dump, no password file), and the dump that
restores the database as it was before the upgrade is still there.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from ivle_maint.config import load_settings
from ivle_maint.db import migrations
from ivle_maint.output import RecordingReporter
from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import error_lines, fill, reference_state
from support.upgrade_helpers import (
    RESUME_LINE,
    at_version_1_0,
    cli,
    final_state,
    marker_keys,
    postinst,
    preinst,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def dumps(node: Any) -> list[Path]:
    return sorted(node.backup_dir.glob("*.dump"))


def test_full_backup_disk_is_one_line_and_nothing_half_written(
        node_factory: Any, site: Any, tmp_path: Path) -> None:
    """The disk fills between preinst and postinst: pg_dump fails, nothing is migrated."""
    from ivle_sandbox import mountns

    reference = reference_state(node_factory, users=3, consoles=1, role="both")

    assert preinst(site).returncode == 0
    unpack(site)
    mountns.require_private(site.backup_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                    str(site.backup_dir)], check=True)
    try:
        filler = site.backup_dir / "filler"
        fill(filler)
        os.truncate(filler, filler.stat().st_size - 8192)  # 8k free: pg_dump starts
        keys = marker_keys(site)
        failed = postinst(site)
        assert failed.returncode == 1
        (line,) = error_lines(failed)
        assert "pg_dump of database" in line and "No space left on device" in line
        assert RESUME_LINE in failed.stderr
        assert sorted(p.name for p in site.backup_dir.iterdir()) == ["filler"]  # no .partial
        assert marker_keys(site) == keys  # nothing migrated without a backup
        filler.unlink()
        done = cli(site, "rerun")
        assert done.returncode == 0, done.stderr
    finally:
        mountns.umount(site.backup_dir)
    assert final_state(site) == reference  # the tmpfs is no jail mount


def test_a_killed_dumps_leftovers_are_removed_by_the_next(site: Any) -> None:
    """A .partial dump and an old-style password file, as a SIGKILL left them."""
    settings = load_settings(str(site.maint_conf))
    site.backup_dir.mkdir(parents=True, exist_ok=True)
    stale = site.backup_dir / f".{site.dbname}-20200101T000000.000000Z-x.dump.partial"
    stale.write_bytes(b"PGDMP half")
    fd, passfile = tempfile.mkstemp(prefix="ivle-maint-pgpass-")
    os.close(fd)
    # A dump still being written (a pg_dump that outlived its run) holds the flock.
    busy = site.backup_dir / f".{site.dbname}-20200102T000000.000000Z-y.dump.partial"
    busy_fd = os.open(busy, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(busy_fd, fcntl.LOCK_EX)
    try:
        made = migrations.backup_now(settings, RecordingReporter())
        assert not stale.exists() and not Path(passfile).exists()
        assert busy.exists()
    finally:
        os.close(busy_fd)
    assert made.exists()
    # No password file is written for pg_dump, anywhere in the temporary directory.
    assert not list(Path(tempfile.gettempdir()).glob("ivle-maint-pgpass-*"))


def test_the_next_run_removes_leftovers_even_without_dumping(site: Any) -> None:
    """dpkg's next preinst (no dump in it) already clears what a SIGKILL left.
    The password file is where an earlier version left it: the temporary
    directory of ivle-maint's own environment (gates/environment: /tmp, not
    the caller's TMPDIR)."""
    site.backup_dir.mkdir(parents=True, exist_ok=True)
    stale = site.backup_dir / f".{site.dbname}-20200101T000000.000000Z-x.dump.partial"
    stale.write_bytes(b"PGDMP half")
    fd, passfile = tempfile.mkstemp(prefix="ivle-maint-pgpass-", dir="/tmp")
    os.close(fd)
    assert preinst(site).returncode == 0
    assert not stale.exists() and not Path(passfile).exists()
    assert dumps(site) == []


@pytest.mark.parametrize("text", [b"[1, 2]\n", b'"a string"\n', b'{"1.0->1.1": [1]}\n',
                                  b"{not json", b"\xff\xfe"])
def test_a_damaged_pins_file_is_one_line_never_a_traceback(node_factory: Any,
                                                              text: bytes) -> None:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node, migrations={**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"})
    assert postinst(node).returncode == 1  # a dump is pinned
    pins = node.backup_dir / "pinned.json"
    assert pins.exists()
    pins.write_bytes(text)
    status = cli(node, "status")  # shows the journal, without the dump
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    done = cli(node, "rerun")  # would rotate dumps: stops at the migrate step
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ivle-maint: error: ")]
    assert len(errors) == 1 and f"{pins}: unreadable (" in errors[0], done.stderr
    assert "repair or remove it" in errors[0]
    assert pins.read_bytes() == text


def test_a_dump_is_on_disk_before_it_is_named_one_and_an_older_one_deleted(
        site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_dump writes to a file ivle-maint opened; once it is renamed a dump,
    rotation deletes the oldest, and migrations follow.  A power cut then
    must not leave an empty file as the only dump: each dump and its name
    are flushed (fsync(2), for real) before rotation runs; so are they in
    each of several dumps, with rotation deleting."""
    settings = load_settings(str(site.maint_conf))
    flushed: list[tuple[int, int]] = []  # (device, inode) of each fsync
    real = os.fsync

    def noted(fd: int) -> None:
        st = os.fstat(fd)
        flushed.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", noted)
    for label in ("one", "two", "three", "four"):
        made = migrations.backup_now(settings, RecordingReporter(), label=label)
        st, directory = made.stat(), made.parent.stat()
        assert (st.st_dev, st.st_ino) in flushed, f"{made} never flushed"
        assert flushed[-1] == (directory.st_dev, directory.st_ino), "its name never flushed"
        flushed.clear()
