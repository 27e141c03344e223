"""Abuse of the jail mounts directory and the consoles and unmount steps.

Real processes, real bind mounts (in the test run's private mount
namespace), a real node.  A jail mounts directory that is empty, `/`, a
system directory, IVLE's whole tree, a symlink out of IVLE's data or a
directory holding other mounts is refused by the preflight, with the
site up; the consoles step signals processes inside users' jails only.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from abuse_helpers import one_error_line
from ivle_maint.output import RecordingReporter
from ivle_maint.steps.consoles import stop_consoles
from ivle_sandbox import mountns
from ivle_sandbox.procs import alive
from upgrade_helpers import at_version_1_0, cli, home_checksums, journal, preinst

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

SLEEP = "import time; print('ready', flush=True); time.sleep(600)"


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start a sleeper (our child) with a given cwd, argv0 and user."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(cwd: Path | str, *, argv0: str | None = None, user: int | None = None,
              code: str = SLEEP) -> subprocess.Popen[bytes]:  # fmt: skip
        proc = subprocess.Popen([argv0 or sys.executable, "-c", code], executable=sys.executable,
                                cwd=str(cwd), user=user, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def set_jail_mounts(node: Any, value: str) -> None:
    text = node.ivle_conf.read_text()
    line = re.search(r"^\s*mounts = .*$", text, re.MULTILINE)
    assert line is not None
    node.ivle_conf.write_text(text.replace(line.group(0), f"    mounts = {value}"))


def _unsafe_dirs(node: Any, tmp_path: Path) -> dict[str, tuple[str, str]]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = node.data / "jailmounts-link"
    link.symlink_to(elsewhere)
    up = node.data / "jailmounts-up"
    up.symlink_to(node.data.parent)
    foreign = node.data / "other-mounts"
    (foreign / "pgdata").mkdir(parents=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    mountns.bind(disk, foreign / "pgdata")
    return {
        "empty": ('""', "is empty"),
        "root": ("/", "resolves to /"),
        "srv": ("/srv", "resolves to the system directory /srv"),
        "ivle tree": (str(node.root), "holds IVLE's data directory"),
        "symlink out": (str(link), f"is a symlink to {elsewhere}, outside IVLE's data directory"),
        "symlink up": (str(up), f"holds IVLE's data directory {node.data}"),
        "foreign mounts": (str(foreign), f"holds mounts that are not users' jails: "
                                         f"{foreign}/pgdata"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["empty", "root", "srv", "ivle tree", "symlink out", "symlink up", "foreign mounts"]
)
def test_preflight_refuses_an_unsafe_jail_mounts_directory_with_the_site_up(
    node_factory: Any, spawn: Any, tmp_path: Path, case: str
):
    node = at_version_1_0(node_factory(users=2, consoles=2, env=True))
    value, expected = _unsafe_dirs(node, tmp_path)[case]
    consoles = node.console_pids()
    # A process sitting in the configured directory, and one in IVLE's tree.
    bystanders = [spawn(node.data), spawn(node.root)]
    if case in ("symlink out", "foreign mounts"):
        bystanders.append(spawn(Path(value).resolve()))
    set_jail_mounts(node, value)
    done = preinst(node)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert "[paths][[jails]] mounts" in line and expected in line, line
    assert "refusing to stop processes or unmount anything" in line
    assert node.service_running("apache2") and node.service_running("ivle-usrmgt-server")
    assert sorted(node.console_pids()) == sorted(consoles)
    assert all(proc.poll() is None for proc in bystanders)
    assert len(node.mounts()) >= 6  # every user's jail still mounted
    assert not journal(node).get("steps", {}).get("stop-web")
    # The same refusal from the steps run by hand.
    for command in (("consoles", "stop"), ("mounts", "unmount")):
        by_hand = cli(node, *command)
        assert by_hand.returncode == 2 and expected in one_error_line(by_hand)
    assert all(proc.poll() is None for proc in bystanders)


def test_consoles_step_signals_only_processes_inside_a_users_jail(node: Any, spawn: Any):
    login = node.users[0].login
    jail = node.jail(login)
    consoles = node.console_pids()
    in_mounts_dir = spawn(node.jail_mounts)  # the mounts directory itself: no jail
    fake_postgres = spawn(jail, argv0="postgres")  # named like the database server
    pg_uid = psutil.Process(node.pg.pid).uids().real
    as_postgres = spawn(jail, user=pg_uid)  # running as the server's system user
    in_home = spawn(jail / "home" / login)  # a student's process: stopped
    rep = RecordingReporter()
    result = stop_consoles(node.jail_mounts, rep, share=node.share, term_timeout=5)
    assert {s.process.pid for s in result.stopped} == {*consoles, in_home.pid}
    assert in_home.wait(timeout=5) == -signal.SIGTERM
    assert all(p.poll() is None for p in (in_mounts_dir, fake_postgres, as_postgres))
    assert alive(node.pg.pid) and node.service_running("ivle-usrmgt-server")
    spared = {p.pid for p in result.spared}
    assert {fake_postgres.pid, as_postgres.pid} <= spared
    assert in_mounts_dir.pid not in spared  # not even considered: outside every jail
    warned = [line for line in rep.lines if "not stopping the database server" in line]
    assert len(warned) == 2 and all("\n" not in line for line in warned)


def test_a_busy_mount_held_by_a_spared_process_is_named_and_left(node: Any, spawn: Any):
    login = node.users[0].login
    homes = home_checksums(node)
    holder = spawn(node.jail(login) / "home", argv0="postgres")
    assert cli(node, "consoles", "stop").returncode == 0
    done = cli(node, "mounts", "unmount")
    assert done.returncode == 1
    line = one_error_line(done)
    assert f"held by pid {holder.pid} " in line and "--lazy" in line
    left = {m.mountpoint for m in node.mounts()}
    assert str(node.jail(login) / "home") in left
    assert not any(p.startswith(str(node.jail(node.users[1].login))) for p in left)
    holder.kill()
    holder.wait()
    assert cli(node, "mounts", "unmount").returncode == 0
    assert node.mounts() == [] and home_checksums(node) == homes


def test_a_console_ignoring_sigterm_is_killed(node: Any, spawn: Any):
    stubborn = spawn(node.jail(node.users[1].login) / "home",
                     code="import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     + SLEEP)  # fmt: skip
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert f"pid {stubborn.pid} " in done.stderr and "ignored SIGTERM" in done.stderr
    assert "(1 needed SIGKILL)" in done.stderr and node.console_pids() == []


def test_hostile_jail_names_and_symlinks_reach_nothing_outside(node: Any, spawn: Any,
                                                               tmp_path: Path):
    # A jail whose name has a newline, a space and a command substitution,
    # mounted as IVLE mounts a jail; symlinks out of the tree, in the
    # mounts directory and in a user's home.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    hostile = "a b\n$(touch pwned)"
    jail = node.jail_mounts / hostile
    jail.mkdir()
    mountns.bind(node.template, jail, readonly=True)
    (node.jail_mounts / "evil").symlink_to(outside)
    login = node.users[0].login
    (node.home(login) / "root").symlink_to("/")
    in_hostile = spawn(jail)
    by_symlink = spawn(outside)
    homes = home_checksums(node)
    before_outside = [m for m in mountns.mounts_under(Path("/")) if
                      not m.mountpoint.startswith(str(node.root))]  # fmt: skip
    stopped = cli(node, "consoles", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert in_hostile.wait(timeout=10) == -signal.SIGTERM
    assert by_symlink.poll() is None
    done = cli(node, "mounts", "unmount")
    assert done.returncode == 0, done.stderr
    assert node.mounts() == []
    after_outside = [m for m in mountns.mounts_under(Path("/")) if
                     not m.mountpoint.startswith(str(node.root))]  # fmt: skip
    assert after_outside == before_outside
    assert (outside / "keep").read_text() == "keep" and not Path("pwned").exists()
    assert (node.jail_mounts / "evil").is_symlink() and home_checksums(node) == homes
