"""A judged process replaced by another under the same pid (gate: gates/processes.py).

Real processes with a real student uid in a jail tree on disk.  The fault
is injected where a student wins a race: after the gate judged a process
and before the syscall that names its pid, the process ends and an
innocent one outside every jail (the database server, say) gets its pid
(the kernel's ns_last_pid makes that certain rather than lucky).  Which
processes are signalled through a held pidfd and which are not is
generated (MAX_PIDFDS: a site with more student processes than that).
The innocent process is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.gates import processes

pytestmark = [pytest.mark.needs_root]

UID = 23456  # a student's, as the owner of the home in the jail tree says


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[processes.JailTree]:
    home = tmp_path / "jm" / "alice" / "home" / "alice"
    home.mkdir(parents=True)
    os.chown(home, UID, UID)
    yield processes.jail_tree(str(tmp_path / "jm"))


def _spawn(argv: list[str], cwd: str, *, user: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=cwd, user=user, stdin=subprocess.DEVNULL)


def _at_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """An innocent process outside every jail with exactly this pid, or None
    when another fork on the machine took it first."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str(pid - 1))
        proc = _spawn(["sleep", "600"], "/")
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), held=st.integers(0, 4), data=st.data())
def test_a_pid_reused_between_judgement_and_signal_is_never_signalled(
    tree: processes.JailTree, monkeypatch: pytest.MonkeyPatch, n: int, held: int, data: Any,
) -> None:
    """N student processes, HELD of them signalled through a held pidfd;
    VICTIM (one ignoring SIGTERM or not) is replaced by an innocent one."""
    victim = data.draw(st.integers(0, n - 1), label="victim")
    ignore_term = data.draw(st.booleans(), label="ignore_term")
    cwd = os.path.join(tree.top, "alice", "home", "alice")
    code = ("trap '' TERM; " if ignore_term else "") + "exec sleep 600"
    students = [_spawn(["sh", "-c", code], cwd, user=UID) for _ in range(n)]
    target = students[victim]
    innocent: list[subprocess.Popen[bytes]] = []
    real_kill, real_open = os.kill, os.pidfd_open

    def replace(pid: int) -> None:
        """The judged process ends; an innocent one takes its pid."""
        if pid == target.pid and not innocent and target.poll() is None:
            real_kill(pid, signal.SIGKILL)
            target.wait()
            other = _at_pid(pid)
            if other is not None:
                innocent.append(other)

    def kill(pid: int, sig: int) -> None:
        if sig:
            replace(pid)
        real_kill(pid, sig)

    def pidfd_open(pid: int, flags: int = 0) -> int:
        replace(pid)
        return real_open(pid, flags)

    monkeypatch.setattr(processes, "MAX_PIDFDS", held)
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    try:
        processes.empty_jails(tree, term_timeout=0.2, bound=5)
    finally:
        monkeypatch.undo()
        hit = [(p.poll(), psutil.Process(p.pid).status() if p.poll() is None else None)
               for p in innocent]
        for proc in [*students, *innocent]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if not innocent:
        return  # another fork took the pid: nothing was tried
    assert hit == [(None, psutil.STATUS_SLEEPING)], \
        f"the innocent process that reused pid {target.pid} was signalled: {hit}"
