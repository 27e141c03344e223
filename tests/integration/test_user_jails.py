"""ivle-remakeuser -a on a sandbox node: homes survive, per-user failures are caught."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ivle_maint.cli import main
from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.jails import template
from ivle_maint.jails.users import PROGRESS_LABEL, UserJailsError, remake_user_jails
from ivle_maint.output import RecordingReporter
from ivle_sandbox.node import install_version

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def master(node_factory):
    """Six users whose jails are not mounted (as after the unmount step)."""
    node = node_factory(users=6, role="master", mount=False, services=False)
    install_version(node, "1.1")
    return node


def settings_of(node, **commands):
    settings = load_settings(str(node.maint_conf))
    settings.conf["commands"].update(commands)
    return settings


def homes_fingerprint(node) -> dict[str, tuple[str, int, int, int]]:
    """sha256, uid, gid and mode of every file and directory under every home."""
    found = {}
    for user in node.users:
        home = node.home(user.login)
        for path in [home, *sorted(home.rglob("*"))]:
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path)] = (digest, st.st_uid, st.st_gid, st.st_mode)
    return found


def jail_version(node, login: str) -> str:
    text = (node.jails_src / login / "home" / ".ivle" / "jail.conf").read_text()
    return next(line.split(" = ")[1] for line in text.splitlines() if line.startswith("version"))


def test_every_user_rebuilt_and_every_home_file_kept(master):
    # Files a student might have: hidden, nested, binary, an empty one.
    extra = master.home("user0001") / ".config" / "empty"
    extra.parent.mkdir()
    extra.touch()
    before = homes_fingerprint(master)
    assert len(before) >= 6 * 8
    result = remake_user_jails(settings_of(master), RecordingReporter())
    assert homes_fingerprint(master) == before
    assert (result.total, result.rebuilt, result.failed) == (6, 6, ())
    assert result.total_from == "database"
    assert result.unchanged == ()
    assert json.loads(json.dumps(result.metrics))["rebuilt"] == 6  # the journal stores it
    assert all(jail_version(master, u.login) == "1.1" for u in master.users)


def test_injected_failures_are_reported_by_login_although_the_tool_exits_0(master):
    master.set_fakes("ivle-remakeuser", fail_users=["user0002", "user0005"])
    before = homes_fingerprint(master)
    with pytest.raises(UserJailsError) as caught:
        remake_user_jails(settings_of(master), RecordingReporter())
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert "jails of 2 of 6 users were not rebuilt (the tool exited 0 all the same)" in message
    assert "user0002 ([Errno 5] injected failure (fakes.conf))" in message and "user0005" in message
    assert "user0001" not in message
    assert error.result.run.exit_code == 0
    assert [f.login for f in error.result.failed] == ["user0002", "user0005"]
    assert error.result.rebuilt == 4
    # The others were rebuilt all the same, and nobody lost a file.
    assert jail_version(master, "user0003") == "1.1"
    assert homes_fingerprint(master) == before


def test_a_mounted_jail_is_a_real_failure(master):
    master.mount_user("user0004")
    try:
        with pytest.raises(UserJailsError, match=r"user0004 \(\[Errno 16\] jail is mounted"):
            remake_user_jails(settings_of(master), RecordingReporter())
    finally:
        master.unmount_all()


def test_progress_counts_users_done_of_the_database_total(master):
    master.set_fakes("ivle-remakeuser", delay_per_user=0.25)
    reporter = RecordingReporter()
    remake_user_jails(settings_of(master), reporter, interval=0.05)
    calls = [(done, total) for label, done, total in reporter.progress_calls]
    assert {label for label, _, _ in reporter.progress_calls} == {PROGRESS_LABEL}
    assert {total for _, total in calls} == {6}
    done = [d for d, _ in calls]
    assert done == sorted(done)  # never goes backwards
    assert len(set(done[:-1])) >= 4  # users seen finishing one by one
    assert done[-1] == 6


def test_total_is_what_the_tool_walks_not_the_jail_directories(master):
    master.delete_user("user0006")  # its jail directory stays behind
    stale = master.jails_src / "user0006"
    stamp = stale.stat().st_mtime_ns
    reporter = RecordingReporter()
    result = remake_user_jails(settings_of(master), reporter)
    assert (result.total, result.rebuilt) == (5, 5)
    assert stale.stat().st_mtime_ns == stamp
    assert not any(line.startswith("warning") for line in reporter.lines)


def test_a_user_without_home_afterwards_is_a_failure(master, tmp_path):
    # A tool that exits 0, says nothing, and loses a home.
    broken = tmp_path / "broken"
    broken.write_text(f"#!/bin/sh\nrm -rf {master.jails_src}/user0003/home\n")
    broken.chmod(0o755)
    with pytest.raises(UserJailsError, match=r"1 of 6 users .*: user0003 \(no .*user0003/home/"
                       r"user0003 afterwards\)"):
        remake_user_jails(settings_of(master, remakeuser=str(broken)), RecordingReporter())


def test_users_showing_no_change_are_warned_about(master, tmp_path):
    idle = tmp_path / "idle"
    idle.write_text("#!/bin/sh\nexit 0\n")
    idle.chmod(0o755)
    reporter = RecordingReporter()
    result = remake_user_jails(settings_of(master, remakeuser=str(idle)), reporter)
    assert result.unchanged == tuple(u.login for u in master.users)
    assert "warning: jail of user0001 shows no change after" in reporter.lines[0]


def test_nonzero_exit_is_a_failure_with_the_tail(master, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho 'cannot connect to the database' >&2\nexit 3\n")
    bad.chmod(0o755)
    with pytest.raises(MaintError, match=r"bad -a failed with status 3; last output: cannot "
                       r"connect to the database"):
        remake_user_jails(settings_of(master, remakeuser=str(bad)), RecordingReporter())


def test_refuses_unless_root(master, monkeypatch):
    monkeypatch.setattr(template.os, "geteuid", lambda: 33)
    stamp = (master.jails_src / "user0001").stat().st_mtime_ns
    with pytest.raises(MaintError, match="must run as root"):
        remake_user_jails(settings_of(master), RecordingReporter())
    assert (master.jails_src / "user0001").stat().st_mtime_ns == stamp


def test_unreachable_database_falls_back_to_jail_directories_for_the_count(master):
    settings = settings_of(master)
    # ivle-maint's own connection goes nowhere; the tool reads ivle.conf
    # itself and still works, so only where the count comes from changes.
    settings.conf["database"].update({"connect_as": "postgres", "socket_dir": "/nonexistent",
                                      "wait_timeout": 0})
    reporter = RecordingReporter()
    result = remake_user_jails(settings, reporter)
    assert result.total_from == "jail directories"
    assert result.total == 6
    assert any("counting jail directories" in line for line in reporter.lines)


def test_cli_jails_remake_users(node_factory, capsys):
    node = node_factory(users=3, role="master", mount=False, services=False, env=True)
    node.set_fakes("ivle-remakeuser", fail_users="user0003")
    assert main(["jails", "remake-users"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "user0003" in lines[0]
    node.set_fakes("ivle-remakeuser", fail_users=None)
    assert main(["jails", "remake-users"]) == 0
    assert "3 of 3 user jails rebuilt" in capsys.readouterr().err
    assert os.path.isdir(Path(node.home("user0003")))
