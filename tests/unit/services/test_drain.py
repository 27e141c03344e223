"""drain: waiting on real processes through pidfds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ivle_maint.services.drain import children, signal_and_drain, wait_exit

# A parent with two children, as Apache's: on SIGUSR1 it tells them (SIGUSR1) to
# finish; a child told so exits unless STAY says it is one that lives as long
# as its parent (mod_cgid's daemon); the parent itself exits only when
# PARENT_EXITS, long after (Apache's parent looks once a second).
FAMILY = r"""
import os, signal, sys, time
stay, parent_exits = sys.argv[1] == "1", sys.argv[2] == "1"
kids = []
for i in range(2):
    if stay and i == 1:  # inherited: ignoring before "ready" is printed
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(60)
    kids.append(pid)
def finish(*_):
    for kid in kids:
        os.kill(kid, signal.SIGUSR1)
    if parent_exits:
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
        os._exit(0)
signal.signal(signal.SIGUSR1, finish)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    stay, parent_exits = request.param
    proc = subprocess.Popen([sys.executable, "-c", FAMILY, str(int(stay)), str(int(parent_exits))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    for pid in children(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("family", [(False, False)], indirect=True)
def test_the_children_gone_is_enough(family: subprocess.Popen[str]):
    kids = children(family.pid)
    assert len(kids) == 2
    assert signal_and_drain(family.pid, signal.SIGUSR1, timeout=60)
    assert all(wait_exit(kid, 0) for kid in kids)
    assert family.poll() is None  # the parent still runs: it was not waited for


@pytest.mark.parametrize("family", [(True, True)], indirect=True)
def test_the_parent_gone_is_enough(family: subprocess.Popen[str]):
    """A child that lives as long as its parent: the parent's exit says it."""
    assert signal_and_drain(family.pid, signal.SIGUSR1, timeout=60)
    family.wait()


@pytest.mark.parametrize("family", [(True, False)], indirect=True)
def test_a_child_still_busy_runs_out_the_timeout(family: subprocess.Popen[str]):
    assert not signal_and_drain(family.pid, signal.SIGUSR1, timeout=0.2)
    assert family.poll() is None


def test_wait_exit_of_an_ended_process_and_of_a_running_one():
    done = subprocess.Popen(["true"])
    done.wait()
    assert wait_exit(done.pid, 0)  # reaped: no such process
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert not wait_exit(sleeper.pid, 0)
        sleeper.terminate()
        assert wait_exit(sleeper.pid, 60)  # readable as it exits, before the reaping
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_gone_main_process_needs_no_wait():
    done = subprocess.Popen(["true"])
    done.wait()
    assert signal_and_drain(done.pid, signal.SIGUSR1, timeout=60)  # nothing signalled
