"""quickrun.run: system.run's contract, returning when the command has ended."""

from __future__ import annotations

import os
import signal

import pytest

from ivle_maint import quickrun as quick
from ivle_maint import system
from ivle_maint.errors import MaintError


def test_status_output_and_lines_as_system_run_gives_them():
    seen: list[str] = []
    done = quick.run(["sh", "-c", "echo one; echo two >&2; exit 3"], timeout=30,
                     on_line=seen.append, keep_stdout=True)
    again = system.run(["sh", "-c", "echo one; echo two >&2; exit 3"], timeout=30,
                       keep_stdout=True)
    assert (done.exit_code, done.stdout, done.tail) == (again.exit_code, again.stdout,
                                                        again.tail) == (3, "one\ntwo",
                                                                        ("one", "two"))
    assert seen == ["one", "two"] and not done.ok


def test_a_command_killed_by_a_signal_has_a_negative_status():
    assert quick.run(["sh", "-c", "kill -TERM $$"], timeout=30).exit_code == -signal.SIGTERM


def test_the_environment_is_the_gates(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    done = quick.run(["sh", "-c", "echo ${LD_PRELOAD:-unset}"], timeout=30, keep_stdout=True)
    assert done.stdout == "unset"


def test_a_daemon_keeping_the_output_open_is_not_waited_for(monkeypatch: pytest.MonkeyPatch):
    """An init script whose daemon inherits its stdout: the script's exit counts."""
    monkeypatch.setattr(quick, "OUTPUT_GRACE", 0.2)
    done = quick.run(["sh", "-c", "sleep 60 & echo $!; echo started"], timeout=30,
                     keep_stdout=True)
    daemon = int(done.stdout.split()[0])
    try:
        assert done.ok and done.tail[-1] == "started"
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_a_command_over_its_time_is_ended_and_said_so():
    with pytest.raises(MaintError, match=r"^sh did not finish within 0.2s$"):
        quick.run(["sh", "-c", "echo $$ > /dev/null; sleep 60"], timeout=0.2)


def test_an_unsafe_program_is_refused_as_system_run_refuses_it(tmp_path):
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o777)  # anyone may change it
    with pytest.raises(MaintError) as ours:
        quick.run([str(script)], timeout=30)
    with pytest.raises(MaintError) as theirs:
        system.run([str(script)], timeout=30)
    assert str(ours.value) == str(theirs.value)
