"""Fault injection inside a FULL rollback's database step: the postinst of
the kept 1.0 (a destructive 1.1 rolled back, data loss accepted) killed
when it reaches each point of restore.database (a marker file says which;
the process kills itself there, once), then dpkg's rerun of the postinst.

Whatever the point, the rerun ends with the dump's database live and open
to sessions, the replaced one kept under its _failed_ name (what users wrote
since is there, not lost), no database left half-restored or half-swapped,
IVLE's 1.0 code on 1.0's schema, and one line saying the database was put
back."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox.releases import DESTRUCTIVE, RELEASES
from support.upgrade_helpers import (
    at_version_1_0,
    cli,
    final_state,
    journal,
    logins,
    marker_keys,
    start_cli,
    unpack,
    write_row,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

OLD, NEW = "1.0", "1.1"
ACCEPT = {"IVLE_MAINT_ACCEPT_DATA_LOSS": "1"}
POSTINST = ("hook", "--package-version", "1.0", "postinst", "configure", "1.1")

# Each point: the function wrapped, and whether the signal lands before it
# runs ("before") or once it has returned ("after"); the Nth call.
KILL_AT = """\
import os, signal
from pathlib import Path
from ivle_maint.rollback import database, cluster_rows

MARKER = Path(os.environ["IVLE_TEST_KILL_MARKER"])

def _fire():
    if not MARKER.exists():
        return
    point, sig = MARKER.read_text().split()
    MARKER.unlink()  # once: the rerun is not killed
    os.kill(os.getpid(), getattr(signal, sig))

def _wrap(module, name, when, nth=1):
    real = getattr(module, name)
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        mine = MARKER.exists() and MARKER.read_text().split()[0] == f"{name}:{when}:{nth}"
        if mine and when == "before" and calls[0] == nth:
            _fire()
        result = real(*args, **kwargs)
        if mine and when == "after" and calls[0] == nth:
            _fire()
        return result
    setattr(module, name, wrapped)

_wrap(database, "_pg_restore", "before")        # created, nothing restored yet
_wrap(database, "_pg_restore", "after")         # restored, not yet said complete
_wrap(cluster_rows, "carry", "after")           # rows carried, nothing renamed
_wrap(database, "_close_to_sessions", "after")  # live closed to sessions, not renamed
_wrap(database, "after_rename", "before", 1)    # live renamed away, restored not yet in
_wrap(database, "after_rename", "before", 2)    # both renamed, still closed to sessions
_wrap(database, "drop_expired", "before")       # swapped, the step not yet recorded
"""
POINTS = ("_pg_restore:before:1", "_pg_restore:after:1", "carry:after:1",
          "_close_to_sessions:after:1", "after_rename:before:1", "after_rename:before:2",
          "drop_expired:before:1")


def databases(node: Any) -> dict[str, bool]:
    """Every database of NODE's server: whether it accepts sessions."""
    conn = node.pg.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname, datallowconn FROM pg_database")
            return {row[0]: bool(row[1]) for row in cur.fetchall()}
    finally:
        conn.close()


def logins_in(node: Any, dbname: str) -> set[str]:
    conn = node.pg.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT login FROM login")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", POINTS)
def test_a_full_rollback_killed_anywhere_in_its_database_step_is_finished_by_a_rerun(
        node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str,
        sig: str) -> None:
    if sig == "SIGTERM" and point.startswith("_pg_restore"):
        pytest.skip("SIGTERM in pg_restore: restore_copy drops the copy (tested beside it)")
    node = at_version_1_0(node_factory(users=3, consoles=0, role="both"))
    assert cli(node, "hook", "preinst", "upgrade", OLD, NEW).returncode == 0
    unpack(node, NEW, {**RELEASES[NEW], **DESTRUCTIVE})
    upgraded = cli(node, "hook", "--package-version", NEW, "postinst", "configure", OLD)
    assert upgraded.returncode == 0, upgraded.stderr
    write_row(node, "written_after")

    before = cli(node, "hook", "preinst", "upgrade", NEW, OLD, extra_env=ACCEPT)
    assert before.returncode == 0, before.stderr
    unpack(node, OLD)
    (tmp_path / "sitecustomize.py").write_text(KILL_AT)
    marker = tmp_path / "kill-at"
    marker.write_text(f"{point} {sig}")
    monkeypatch.setenv("IVLE_TEST_KILL_MARKER", str(marker))
    for key, value in ACCEPT.items():
        monkeypatch.setenv(key, value)
    proc = start_cli(node, *POSTINST, pythonpath=(str(tmp_path),))
    _out, err = proc.communicate(timeout=300)
    assert not marker.exists(), f"never reached {point}: {err}"
    expected = -signal.SIGKILL if sig == "SIGKILL" else 143
    assert proc.returncode == expected, err

    again = cli(node, *POSTINST, pythonpath=(str(tmp_path),), extra_env=ACCEPT)
    assert again.returncode == 0, again.stderr
    present = {n: ok for n, ok in databases(node).items() if n.startswith(node.dbname)}
    assert all(present.values()), present  # nothing left closed to sessions
    assert not [n for n in present if "_rollback_" in n], present  # nothing half-swapped
    kept = [n for n in present if n.startswith(f"{node.dbname}_failed_")]
    assert len(kept) == 1, present
    assert "written_after" in logins_in(node, kept[0])  # the replaced database, kept
    assert "written_after" not in logins(node)  # the dump's rows, as accepted
    assert len(logins(node)) >= 3  # the dump's rows, whole
    # 1.0's schema under 1.0's code: the dump's, as the upgrade's baseline recorded it.
    assert marker_keys(node) == ["20090105", "20090212-01"]
    assert final_state(node)["installed"] == OLD and node.service_running("apache2")
    assert journal(node, NEW, OLD)["state"] == "complete"
    said = [line for line in again.stderr.splitlines() if "restored from" in line
            or "the replaced one kept as" in line]
    assert said, again.stderr  # one line says the database was put back
