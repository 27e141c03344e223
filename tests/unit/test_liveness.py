"""liveness: the runner's token survives the trip through an application_name
or a row, and a runner never judged here is never called dead."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import liveness

runners = st.builds(
    liveness.Runner,
    boot=st.text("0123456789abcdef", min_size=liveness.BOOT_CHARS, max_size=liveness.BOOT_CHARS),
    pidns=st.integers(1, 2**32 - 1), pid=st.integers(1, 4_194_304),
    start=st.integers(0, 2**48))


@settings(max_examples=200, deadline=None)
@given(runners, st.text(max_size=20).filter(lambda t: "." not in t))
def test_a_token_reads_back_as_the_same_runner(runner, host):
    name = f"ivle-maint {runner.token()} on {host}"
    assert liveness.parse(name) == runner


@settings(max_examples=100, deadline=None)
@given(runners)
def test_another_boot_is_unknowable_never_dead(runner):
    mine = liveness.me()
    other = runner if runner.boot != mine.boot else dataclasses.replace(
        runner, boot="f" * liveness.BOOT_CHARS if mine.boot != "f" * liveness.BOOT_CHARS
        else "0" * liveness.BOOT_CHARS)
    judged = liveness.judge(other, "elsewhere")
    assert judged.verdict is liveness.Verdict.UNKNOWABLE
    assert f"ps -p {other.pid}" in judged.text and "on elsewhere" in judged.text


def test_this_process_is_alive_and_a_reused_pid_is_not_it():
    mine = liveness.me()
    assert liveness.judge(mine).verdict is liveness.Verdict.ALIVE
    assert liveness.parse(liveness.token()) == mine
    earlier = dataclasses.replace(mine, start=mine.start - 1)  # same pid, another process
    assert liveness.judge(earlier).verdict is liveness.Verdict.DEAD


def test_an_older_ivle_maints_name_is_unknowable():
    assert liveness.parse("ivle-maint 1.0 on host pid 123") is None
    assert liveness.judge(None, "host").verdict is liveness.Verdict.UNKNOWABLE


def _ending_at_open(monkeypatch, child, name: str) -> list[str]:
    """liveness's open of CHILD's /proc/PID/NAME (stat, status) ends CHILD
    (killed and reaped) once the file is open, before it is read: a student's
    short-lived process met while the table of processes is read."""
    cut: list[str] = []
    real_open = open

    def opening(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if str(path) == f"/proc/{child.pid}/{name}" and not cut:
            child.kill()
            child.wait()
            cut.append(str(path))
        return handle

    monkeypatch.setattr(liveness, "open", opening, raising=False)
    return cut


@pytest.mark.parametrize("where", ["this PID namespace", "another PID namespace"])
def test_a_process_that_ends_while_it_is_read_is_gone_never_unreadable(monkeypatch, where):
    """Whichever process ends between the open of its /proc file and the read
    (ESRCH: ProcessLookupError), it has exited: the runner judged is not
    made unknowable by it.  Before: a dead runner, in this PID namespace or
    another, was 'unknowable' whenever a student's process ended at that
    moment (no --terminate-stale-lock, no 'exited' in cluster status)."""
    mine = liveness.me()
    child = subprocess.Popen(["sleep", "60"])
    other = None
    try:
        if where == "this PID namespace":  # the runner is the child itself, ended at its read
            runner = liveness.Runner(mine.boot, mine.pidns, child.pid,
                                     liveness._start_ticks(liveness.PROC / str(child.pid)))
            name = "stat"
        else:  # a runner of another namespace, gone; the child ends as the scan reads it
            if os.geteuid() != 0:
                pytest.skip("needs root (a PID namespace of its own)")
            other = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
            inner = _wait_inner(other.pid)
            pidns = liveness._ns_inode(os.readlink(f"/proc/{inner}/ns/pid"))
            runner = liveness.Runner(mine.boot, pidns, 1, 1)  # its pid 1, another start
            name = "status"
        cut = _ending_at_open(monkeypatch, child, name)
        judged = liveness.judge(runner)
        assert cut, "the child's file was never read"
        assert judged.verdict is liveness.Verdict.DEAD, judged.text
    finally:
        for proc in (child, other):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_inner(pid: int) -> int:
    """The pid (here) of unshare's child: the namespace's pid 1."""
    for _ in range(1000):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError("unshare started no child")
