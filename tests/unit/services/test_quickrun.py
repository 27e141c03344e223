"""quickrun.run: system.run's contract, returning when the command has ended."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_flood_of_output_keeps_only_the_last_bytes(monkeypatch: pytest.MonkeyPatch):
    """Memory is bounded: 8 MB written, at most OUTPUT_KEPT held, the end kept."""
    monkeypatch.setattr(quick, "OUTPUT_KEPT", 4096)
    done = quick.run(["sh", "-c", "head -c 8000000 /dev/zero | tr '\\0' x; echo; echo end"],
                     timeout=60, keep_stdout=True)
    assert done.ok and done.tail[-1] == "end"
    assert len(done.stdout) <= 4096


def test_each_line_is_handed_on_while_the_command_still_runs(tmp_path):
    """The command waits for a file that only the callback of its first
    line makes: with lines handed on after the exit it would never end."""
    flag = tmp_path / "seen"
    script = f"echo first; while [ ! -e {flag} ]; do sleep 0.01; done; echo second"
    seen: list[str] = []

    def on_line(text: str) -> None:
        seen.append(text)
        flag.touch()

    done = quick.run(["sh", "-c", script], timeout=30, on_line=on_line)
    assert done.ok and seen == ["first", "second"]


output_lines = st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                              blacklist_characters="\n\r\x00"), max_size=20),
                        max_size=8)


@settings(max_examples=25, deadline=None)
@given(output_lines, st.booleans(), st.integers(0, 3))
def test_both_engines_give_the_same_outcome(lines, final_newline, status):
    """system.run through sh (outside steps) and through quickrun (while
    steps run): the same status, kept output, tail and lines handed on."""
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    argv = ["sh", "-c", 'printf "%s" "$1"; exit $2', "sh", text, str(status)]
    outcomes = []
    for steps in (False, True):
        seen: list[str] = []
        with system.steps_running() if steps else contextlib.nullcontext():
            done = system.run(argv, timeout=30, on_line=seen.append, keep_stdout=True)
        outcomes.append((done.exit_code, done.stdout, done.tail, seen))
    assert outcomes[0] == outcomes[1]


def test_commands_run_by_steps_go_through_quickrun(monkeypatch: pytest.MonkeyPatch):
    engines: list[str] = []
    real = quick.run

    def recorded(*args, **kwargs):
        engines.append("quickrun")
        return real(*args, **kwargs)

    monkeypatch.setattr(quick, "run", recorded)
    system.run(["true"], timeout=30)
    with system.steps_running():
        system.run(["true"], timeout=30)
    system.run(["true"], timeout=30)
    assert engines == ["quickrun"]


# One path component's bytes: anything but NUL and '/', often not UTF-8.
COMPONENTS = st.binary(min_size=1, max_size=24).map(
    lambda b: b.replace(b"\0", b"_").replace(b"/", b"_")).filter(lambda b: b not in (b".", b".."))


@settings(max_examples=30, deadline=None)
@given(name=COMPONENTS)
def test_an_argument_that_is_not_utf8_reaches_the_program_as_its_bytes(tmp_path_factory,
                                                                       name: bytes):
    """A path's bytes (os.fsdecode: surrogate-escaped) as an argument: sh
    (1.14 and 2.x) encodes strict UTF-8 and raised; system.run hands such a
    command to subprocess, the program gets the path's own bytes."""
    directory = tmp_path_factory.mktemp("bytes")
    target = os.path.join(os.fsencode(directory), name)
    done = system.run(["touch", "--", os.fsdecode(target)], timeout=30)
    assert done.exit_code == 0
    assert os.listdir(os.fsencode(directory)) == [name]
