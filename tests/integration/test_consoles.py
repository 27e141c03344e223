"""Console processes: real python-console stand-ins in real mounted jails."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint import cli
from ivle_maint.consoles.jail_processes import is_console, list_consoles, stop_consoles_in
from ivle_maint.gates import processes
from ivle_maint.output import RecordingReporter
from ivle_sandbox.procs import alive

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawned() -> Iterator[Any]:
    """Start helper processes (our children); all killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(code: str, *, cwd: str = "/", user: int | None = None,
              argv0: list[str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        argv = argv0 or [sys.executable, "-c", code]
        proc = subprocess.Popen(argv, cwd=cwd, user=user, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # its setup is done
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


READY = "import sys; print('ready', flush=True)\n"


def test_every_console_is_stopped_and_reported_per_jail(node: Any,
                                                       caplog: pytest.LogCaptureFixture):
    # The node runs two consoles with their cwd in a jail; add chrooted ones.
    logins = [u.login for u in node.users]
    node.start_consoles(logins=logins[2:4], chroot=True)
    pids = set(node.console_pids())
    assert len(pids) == 4
    rep = RecordingReporter()
    with caplog.at_level(logging.DEBUG, logger="ivle_maint"):
        result = stop_consoles_in(node.jail_mounts, rep, share=node.share, term_timeout=5)
    assert {s.process.pid for s in result.stopped} == pids
    assert all(s.how == "terminated" for s in result.stopped)  # SIGTERM was enough
    assert not any(alive(pid) for pid in pids)
    assert node.console_pids() == []
    by_pid = {s.process.pid: s.process for s in result.stopped}
    for pid in pids:
        uid = psutil_uid_of_console(node, by_pid[pid].jail)
        assert by_pid[pid].uid == uid
        assert by_pid[pid].reason == "python-console"
        # Each process in the log; what a person reads, one line per jail.
        logged = next(r.getMessage() for r in caplog.records if f"pid {pid} " in r.getMessage())
        assert logged.startswith(f"terminated pid {pid} (user {by_pid[pid].user}")
        assert "python-console" in logged
        assert f"jail {by_pid[pid].jail}: 1 process stopped (0 needed SIGKILL)" in rep.lines
    assert {p.jail for p in by_pid.values()} == set(logins[:4])
    assert len(rep.lines) == 4
    assert result.summary == "stopped 4 processes (0 needed SIGKILL)"


def psutil_uid_of_console(node: Any, login: str | None) -> int:
    assert login is not None
    return int(node.user(login).unixid)


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(node: Any, spawned: Any):
    home = node.jail(node.users[0].login) / "home"
    stubborn = spawned(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + READY
        + "time.sleep(600)", cwd=str(home), user=node.users[0].unixid,
    )  # fmt: skip
    rep = RecordingReporter()
    started = time.monotonic()
    result = stop_consoles_in(node.jail_mounts, rep, share=node.share, term_timeout=1)
    elapsed = time.monotonic() - started
    how = {s.process.pid: s.how for s in result.stopped}
    assert how[stubborn.pid] == "killed"
    assert result.killed == 1 and len(how) == 3  # and the node's two consoles
    assert elapsed >= 1
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert any(f"pid {stubborn.pid})" in line and "ignored SIGTERM" in line for line in rep.lines)


def test_processes_with_cwd_or_open_files_under_the_mounts_are_found(node: Any, spawned: Any):
    node.stop_consoles()
    login = node.users[1].login
    uid = node.users[1].unixid
    home = node.jail(login) / "home" / login
    (home / "notes.txt").write_text("x")
    in_cwd = spawned(READY + "import time; time.sleep(600)", cwd=str(home), user=uid)
    with_file = spawned(
        f"f = open({str(home / 'notes.txt')!r})\n" + READY + "import time; time.sleep(600)",
        user=uid,
    )
    with_dir = spawned(
        f"import os; fd = os.open({str(home)!r}, os.O_RDONLY)\n" + READY
        + "import time; time.sleep(600)", user=uid,
    )  # fmt: skip
    found = {p.pid: p for p in list_consoles(node.jail_mounts, share=node.share)}
    assert set(found) == {in_cwd.pid, with_file.pid, with_dir.pid}
    assert (found[in_cwd.pid].reason, found[in_cwd.pid].path) == ("cwd", str(home))
    assert found[with_file.pid].reason == "open file"
    assert found[with_file.pid].path == str(home / "notes.txt")
    assert (found[with_dir.pid].reason, found[with_dir.pid].path) == ("open file", str(home))
    assert {p.jail for p in found.values()} == {login}
    result = stop_consoles_in(node.jail_mounts, RecordingReporter(), share=node.share)
    assert result.count == 3
    assert all(proc.wait(timeout=5) == -signal.SIGTERM for proc in (in_cwd, with_file, with_dir))


def test_unrelated_processes_are_left_alone(node: Any, spawned: Any, tmp_path: Path):
    # A sibling whose name shares a prefix with the mounts directory, a
    # python-console of another IVLE (another share), a plain sleeper.
    sibling = Path(f"{node.jail_mounts}2")
    sibling.mkdir()
    other_share = tmp_path / "other" / "share" / "ivle" / "services"
    other_share.mkdir(parents=True)
    (other_share / "python-console").write_text(
        "import sys, time\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    bystanders = [
        spawned(READY + "import time; time.sleep(600)", cwd=str(sibling)),
        spawned("", argv0=[sys.executable, str(other_share / "python-console"), "0", "m"]),
        spawned(READY + "import time; time.sleep(600)", cwd=str(tmp_path)),
    ]
    consoles_before = set(node.console_pids())
    result = stop_consoles_in(node.jail_mounts, RecordingReporter(), share=node.share,
                           term_timeout=2)  # fmt: skip
    assert {s.process.pid for s in result.stopped} == consoles_before
    assert all(proc.poll() is None for proc in bystanders)
    # Even without a share, a python-console outside every jail is not ours.
    assert bystanders[1].pid not in {p.pid for p in list_consoles(node.jail_mounts)}


def test_second_run_finds_nothing(node: Any):
    first = stop_consoles_in(node.jail_mounts, RecordingReporter(), share=node.share)
    assert first.count == 2
    rep = RecordingReporter()
    second = stop_consoles_in(node.jail_mounts, rep, share=node.share)
    assert second.stopped == () and second.summary == "no console processes"
    assert rep.lines == []


def test_ivle_maint_and_its_caller_are_never_signalled(node: Any):
    # A shell with its cwd in a jail runs ivle-maint there: both would match.
    home = node.jail(node.users[0].login) / "home"
    code = (
        "import sys; from ivle_maint.consoles.jail_processes import stop_consoles_in\n"
        "from ivle_maint.output import RecordingReporter\n"
        f"r = stop_consoles_in({str(node.jail_mounts)!r}, RecordingReporter(), "
        f"share={str(node.share)!r})\n"
        "print(sorted(s.process.pid for s in r.stopped), sorted(p.pid for p in r.spared))\n"
    )
    shell = subprocess.run(
        ["sh", "-c", 'cd "$1" && "$2" -c "$3"; echo "shell $$ survived"', "sh",
         str(home), sys.executable, code],
        check=False, capture_output=True, text=True, timeout=60, cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    stopped_line, survived = shell.stdout.splitlines()
    stopped, spared = stopped_line.split("] [")
    assert len(stopped.strip("[]").split(",")) == 2  # the node's consoles
    shell_pid = int(survived.split()[1])
    assert str(shell_pid) in spared  # the caller was found, and spared
    assert survived == f"shell {shell_pid} survived"


def test_is_console_matches_the_command_line_shape():
    share = "/usr/share/ivle"
    script = f"{share}/services/python-console"
    assert is_console(["/usr/bin/python", script, "8000", "magic"], share)
    assert is_console(["/usr/bin/python", script, "8000", "magic"], None)
    assert is_console(["python2.7", "/opt/ivle/services/python-console", "1", "m"], None)
    assert not is_console(["/usr/bin/python", "/opt/ivle/services/python-console"], share)
    assert not is_console(["/usr/bin/python", "/tmp/python-console", "1", "m"], None)
    assert not is_console(["vim", "x", f"{share}/services/python-console"], None)
    assert not is_console([], None)


def test_cli_list_and_stop(node: Any, capsys: pytest.CaptureFixture[str]):
    pids = node.console_pids()
    assert cli.main(["consoles", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PID", "USER", "JAIL", "WHY", "COMMAND"]
    assert sorted(int(line.split()[0]) for line in out[1:]) == sorted(pids)
    assert cli.main(["consoles", "stop"]) == 0
    err = capsys.readouterr().err
    jails = {u.login for u in node.users[:2]}
    assert all(f"jail {j}: 1 process stopped (0 needed SIGKILL)" in err for j in jails)
    assert "stopped 2 processes" in err
    assert node.console_pids() == []


def test_a_console_started_during_the_sigterm_wait_is_caught(node: Any,
                                                            monkeypatch: pytest.MonkeyPatch):
    # While ivle-maint waits for the SIGTERMed consoles, a new console
    # starts, as a still-running web server would: the next scan catches it.
    started: list[int] = []
    original = processes._wait

    def wait_and_spawn(handles: Any, timeout: float) -> Any:
        left = original(handles, timeout)
        if not started:
            started.extend(node.start_consoles(1))
        return left

    monkeypatch.setattr(processes, "_wait", wait_and_spawn)
    result = stop_consoles_in(node.jail_mounts, RecordingReporter(), share=node.share)
    assert started and started[0] in {s.process.pid for s in result.stopped}
    assert node.console_pids() == []


def test_a_process_that_vanishes_between_scan_and_signal_is_fine(node: Any, spawned: Any):
    node.stop_consoles()
    home = node.jail(node.users[0].login) / "home"
    proc = spawned(READY + "import time; time.sleep(600)", cwd=str(home),
                   user=node.users[0].unixid)  # fmt: skip
    tree = processes.jail_tree(os.path.realpath(node.jail_mounts))
    found = processes.scan(tree, processes.protected())
    assert [f.pid for f in found] == [proc.pid]
    proc.kill()
    proc.wait()  # gone for good, before ivle-maint signals it
    handle = processes._Handle(found[0])
    assert handle.send(signal.SIGTERM) is False and handle.gone()
    handle.close()
