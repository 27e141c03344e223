"""Commands die with ivle-maint; what a killed run left is ended next time.

Real processes and a real SIGKILL: a run that starts a command whose own
child (an init script's daemon helper, a tool's rsync) is not reached by
the parent-death signal, is killed; the next run's sweep ends the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ivle_maint import children
from ivle_maint.gates import processes
from ivle_maint.output import RecordingReporter
from ivle_sandbox.procs import alive

REPO = Path(__file__).resolve().parents[2]

RUN = """
import sys
from pathlib import Path
from ivle_maint import children, system
with children.tracked_run(Path(sys.argv[1])):
    system.run(["sh", "-c", "sleep 300 & sleep 301; echo finished"])
"""


def test_killed_run_command_dies_and_the_sweep_ends_its_children(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path)], env=env)
    records = tmp_path / "children"
    while not list(records.glob("*.json")) if records.is_dir() else True:
        assert owner.poll() is None
        time.sleep(0.01)
    [record] = list(records.glob("*.json"))
    group = int(record.stem)
    while len(processes.group_members(group, 0)) < 3:  # sh and its two sleeps
        time.sleep(0.01)
    members = processes.group_members(group, 0)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    guard = time.monotonic() + 120  # against a hang, not a measure of speed
    while alive(group):  # the parent-death signal ends sh itself
        assert time.monotonic() < guard, "sh outlived the killed run"
        time.sleep(0.01)
    left = [pid for pid in members if alive(pid)]
    assert left, "the sleeps are sh's children: no parent-death signal reaches them"

    reporter = RecordingReporter()
    ended = children.end_leftovers(tmp_path, reporter)
    assert ended == ["sh -c sleep 300 & sleep 301; echo finished"]
    assert not [pid for pid in members if alive(pid)]
    assert not list(records.glob("*.json"))
    assert "left running by a killed ivle-maint" in reporter.lines[0]


def test_a_live_owners_children_are_left_alone(tmp_path):
    (tmp_path / "children").mkdir()
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        with children.tracked_run(tmp_path):
            children.record(sleeper.pid, ["sleep", "300"])
        assert children.end_leftovers(tmp_path, RecordingReporter()) == []
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_fork_that_never_reaches_exec_is_killed_and_said(monkeypatch):
    """A child hung between fork and exec (a C library lock another thread
    held at the fork) would hold its parent for ever: after SPAWN_GRACE it is
    killed, and the spawn says so, so the command is started again."""
    monkeypatch.setattr(children, "SPAWN_GRACE", 0.2)
    with children.spawning() as spawn:
        pid = os.fork()
        if pid == 0:  # the stuck child: our own program, never exec'ed
            time.sleep(60)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert spawn.stuck
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_fork_that_reaches_exec_is_left_alone(monkeypatch):
    monkeypatch.setattr(children, "SPAWN_GRACE", 0.2)
    with children.spawning() as spawn:
        child = subprocess.Popen(["sleep", "1"])
        time.sleep(0.5)  # past the grace: an exec'ed program is not ours to kill
    assert not spawn.stuck and child.wait() == 0


def test_a_record_whose_group_number_another_process_now_has_never_signals_it(tmp_path):
    """A record in the run directory names a killed run's command by its
    group's number; by the next run that number may be an unrelated
    process's (pid reuse: a student's session, a daemon), started after the
    recorded one, or the record may not say when the command started.
    Whatever the record says, a live process that is not the recorded one
    is never signalled, and the recorded one (the same start) is ended."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    records = tmp_path / "children"
    records.mkdir()

    @settings(max_examples=40, deadline=None)
    @given(recorded=st.one_of(st.none(), st.just(0), st.integers(-10**6, 10**6)),
           owner_start=st.one_of(st.none(), st.integers(0, 10**9)))
    def case(recorded, owner_start):
        # recorded: the record's start, as an offset from the live process's
        # own start (0: the very process), or None (not recorded).
        group = subprocess.Popen(["sleep", "300"], start_new_session=True)
        try:
            start = None
            while start is None:  # /proc has it once the child is set up
                start = children.start_time(group.pid)
            record = {"pid": group.pid, "argv": ["ivle-buildjail", "-u"],
                      "start": None if recorded is None else start + recorded,
                      "owner": 2**22 + 1, "owner_start": owner_start}  # a dead owner
            (records / f"{group.pid}.json").write_text(json.dumps(record))
            ended = children.end_leftovers(tmp_path, RecordingReporter())
            if recorded == 0:
                assert ended == ["ivle-buildjail -u"] and group.poll() == -signal.SIGTERM
            else:
                assert ended == [] and group.poll() is None, record
            assert not list(records.iterdir())
        finally:
            group.kill()
            group.wait()

    case()


LEADERLESS = """
import os, subprocess, sys
uid, n = int(sys.argv[1]), int(sys.argv[2])
kids = [subprocess.Popen(["sleep", "300"], user=uid, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL) for _ in range(n)]
print(" ".join(str(k.pid) for k in kids), flush=True)
sys.stdin.read()  # until told: the group's start is read while its leader lives
os._exit(0)
"""


def test_a_group_whose_leader_has_gone_is_ended_only_where_its_members_carry_the_commands_mark(
        tmp_path):
    """A killed run's record names its command's group by number.  Once the
    leader has gone, that number says nothing by itself: a session another
    process made since (a daemon's double fork, a student's `setsid sh -c
    'job &'`) may have it, members and all.  Only members carrying the
    mark the recorded command's environment carried (children.MARK, never
    readable by a student) are ended; a stranger's group of any uid, a
    process with another command's mark, or a record of a version that
    wrote no mark leave every process running."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ivle_maint.gates import environment

    records = tmp_path / "children"
    records.mkdir()

    @settings(max_examples=30, deadline=None)
    @given(members=st.sampled_from(["same", "other", "none"]), recorded=st.booleans(),
           uid=st.sampled_from([0, 61234]), n=st.integers(1, 3))
    def case(members, recorded, uid, n):
        mark = children.new_mark()
        env = {k: v for k, v in os.environ.items() if k != environment.MARK}
        env["PYTHONPATH"] = str(REPO)
        if members != "none":
            env[environment.MARK] = mark if members == "same" else children.new_mark()
        leader = subprocess.Popen([sys.executable, "-c", LEADERLESS, str(uid), str(n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                  start_new_session=True, text=True)
        pids = [int(p) for p in leader.stdout.readline().split()]
        try:
            start = children.start_time(leader.pid)
            leader.communicate("")  # the leader exits: its members live on
            record = {"pid": leader.pid, "argv": ["ivle-buildjail", "-u"], "start": start,
                      "owner": 2**22 + 1, "owner_start": None}  # a dead owner
            if recorded:
                record["mark"] = mark
            (records / f"{leader.pid}.json").write_text(json.dumps(record))
            ended = children.end_leftovers(tmp_path, RecordingReporter())
            if members == "same" and recorded:
                assert ended == ["ivle-buildjail -u"]
                assert not [pid for pid in pids if alive(pid)]
            else:
                assert ended == [], record
                assert all(alive(pid) for pid in pids), (members, recorded)
            assert not list(records.iterdir())
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pids:
                while alive(pid):
                    time.sleep(0.01)

    case()
