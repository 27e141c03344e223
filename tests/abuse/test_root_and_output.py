"""Root and output (gates/root.py, output.py, logfile.py): a command that
needs root says so in one line (exit 2) instead of answering wrongly; a
terminal or a log that fails (closed stdout, stderr on a full disk, a
reader gone, a full log filesystem) never turns a completed step into a
failure, never prints a traceback, and never stops an upgrade half-way;
nor does a hangup (the terminal closed).  ivle-maint's own output that
cannot be written (--help, --version, a listing on a full disk) is one
error line and exit status 1.

Each case runs real ivle-maint processes on a sandbox node.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.cli import build_parser
from support.abuse_helpers import fill
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    journal,
    set_setting,
    start_cli,
    stubborn_console,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

NOBODY = 65534
PREINST = ("hook", "preinst", "upgrade", "1.0", "1.1")
POSTINST = ("hook", "--package-version", "1.1", "postinst", "configure", "1.0")


def run(node: Any, *args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
        user: int | None = None,
        before: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ivle_maint", *args], env=env, text=True,
                          stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, user=user,
                          preexec_fn=before, timeout=300, check=False)


def before_steps_done(node: Any) -> None:
    steps = journal(node)["steps"]
    for name in ("stop-web", "stop-consoles", "unmount-jails", "baseline"):
        assert steps[name]["status"] == "done", steps
    assert not node.service_running("apache2")
    assert not [m for m in node.mounts() if m.mountpoint.startswith(str(node.jail_mounts))]


def log_text(node: Any) -> str:
    return "".join(p.read_text() for p in sorted(node.maint_log_dir.glob("upgrade-*.log")))


# -- root ------------------------------------------------------------------

@pytest.mark.parametrize("args", [("consoles", "list"), ("consoles", "stop"), ("status",),
                                  ("mounts", "list"), ("db", "status"), PREINST])
def test_a_command_that_needs_root_says_so_in_one_line_as_another_user(
        node: Any, args: tuple[str, ...]) -> None:
    """Not "0 processes use the jails" nor "no upgrades recorded"."""
    consoles = node.console_pids()
    done = run(node, *args, user=NOBODY)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "needs root" in done.stderr, done.stderr
    assert done.stderr.startswith(f"ivle-maint: error: {args[0]}")
    assert sorted(node.console_pids()) == sorted(consoles)
    assert node.service_running("apache2") and journal(node) == {}


def test_settings_need_no_root(node: Any) -> None:
    done = run(node, "settings", "--spec", user=NOBODY)
    assert done.returncode == 0 and "needs root" not in done.stderr


# -- a terminal that fails -------------------------------------------------

def close_stdout() -> None:
    os.close(1)


def test_closed_stdout_and_stderr_on_a_full_disk_change_no_exit_status(node: Any) -> None:
    """`ivle-maint ... >&- 2>/dev/full`: the steps run, the status is 0."""
    at_version_1_0(node)
    with open("/dev/full", "w") as full:
        done = run(node, *PREINST, stdout=None, stderr=full, before=close_stdout)
    assert done.returncode == 0
    before_steps_done(node)
    log = log_text(node)
    assert "Traceback" not in log and "record the migration baseline: recorded" in log


def close_stdout_and_stderr() -> None:
    os.close(1)
    os.close(2)


def test_closed_stdout_and_stderr_at_start_change_no_exit_status(node: Any) -> None:
    """`ivle-maint ... >&- 2>&-`: no file of the run takes descriptor 1 or 2."""
    at_version_1_0(node)
    done = run(node, *PREINST, stdout=None, stderr=None, before=close_stdout_and_stderr)
    assert done.returncode == 0
    before_steps_done(node)
    log = log_text(node)
    assert "Traceback" not in log and "record the migration baseline: recorded" in log


def test_closed_stdout_is_no_traceback_and_no_file_takes_its_place(node: Any) -> None:
    """Descriptor 1 closed: the lock, the log or a dump would get it."""
    at_version_1_0(node)
    done = run(node, *PREINST, stdout=None, before=close_stdout)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr
    before_steps_done(node)
    status = run(node, "status", stdout=None, before=close_stdout)
    assert status.returncode == 0 and status.stderr == "", status.stderr


@pytest.mark.parametrize("args", [("status",), ("mounts", "list"), ("db", "status"),
                                  ("settings", "--spec"), ("plan", "--to", "1.1")])
def test_a_reader_gone_early_changes_nothing_but_the_output(node: Any,
                                                            args: tuple[str, ...]) -> None:
    """`ivle-maint status | head -1`: no error line, no traceback, same status."""
    normal = cli(node, *args)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        closed = run(node, *args, stdout=write_end)
    finally:
        os.close(write_end)
    assert closed.returncode == normal.returncode, closed.stderr
    assert closed.stderr == normal.stderr


def test_dead_output_pipe_never_stops_the_abort(node_factory: Any) -> None:
    """`... | tee log` whose tee dies mid-run: every later write gets EPIPE."""
    from support.abuse_helpers import hold_migration_lock, old_site_untouched

    node = at_version_1_0(node_factory(users=3, consoles=1))
    holder = hold_migration_lock(node)
    set_setting(node, "consoles", "term_timeout", "3")
    stubborn = stubborn_console(node)
    try:
        proc = start_cli(node, *PREINST)
        wait_for_step(node, "stop-consoles", proc)
        assert proc.stderr is not None
        proc.stderr.close()  # the reader is gone
        assert proc.wait(timeout=120) == 1
    finally:
        holder.close()
        stubborn.kill()
    assert journal(node)["state"] == "aborted"
    assert node.service_running("apache2")
    assert "abort: start-web" in log_text(node)
    again = cli(node, "rerun")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    old_site_untouched(node)


# -- a log that fails ------------------------------------------------------

@pytest.fixture
def full_log_dir(node: Any) -> Iterator[Path]:
    """After a healthy preinst (whose preflight proves room for the log),
    the log directory on a tiny tmpfs, filled to the last byte: the disk
    fills between dpkg's scripts, and the postinst must still complete."""
    at_version_1_0(node)
    done = cli(node, *PREINST)
    assert done.returncode == 0, done.stderr
    before_steps_done(node)
    unpack(node)
    log_dir = node.maint_log_dir
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs", str(log_dir)],
                   check=True)
    try:
        fill(log_dir / "filler", b"x" * 512)
        yield log_dir
    finally:
        subprocess.run(["umount", str(log_dir)], check=False)


def upgraded(node: Any) -> None:
    assert journal(node)["state"] == "complete"
    assert node.service_running("apache2")


def test_a_full_log_filesystem_never_fails_the_run_nor_prints_a_traceback(
        node: Any, full_log_dir: Path) -> None:
    done = cli(node, *POSTINST)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr, done.stderr
    said = [ln for ln in done.stderr.splitlines() if "the rest of this run is not logged" in ln]
    assert len(said) == 1 and "No space left on device" in said[0], done.stderr
    upgraded(node)


def test_a_full_log_filesystem_with_stderr_on_a_full_disk_completes_the_run(
        node: Any, full_log_dir: Path) -> None:
    with open("/dev/full", "w") as full:
        done = run(node, *POSTINST, stdout=None, stderr=full, before=close_stdout)
    assert done.returncode == 0
    upgraded(node)


def test_a_full_log_filesystem_that_cannot_rotate_the_last_log_completes_the_run(
        node: Any, full_log_dir: Path) -> None:
    """The earlier log cannot be compressed: rotation waits, the run goes on."""
    earlier = full_log_dir / "upgrade-0.9_to_1.0-20200101T000000Z.log"
    earlier.write_bytes(b"")  # room for the name only: its .gz cannot be written
    os.truncate(full_log_dir / "filler", os.stat(full_log_dir / "filler").st_size - 8192)
    earlier.write_bytes(os.urandom(8192 - 512))
    later = full_log_dir / "upgrade-0.9_to_1.0-20200102T000000Z.log"
    later.write_bytes(b"")
    done = cli(node, *POSTINST)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "not rotated" in done.stderr, done.stderr
    upgraded(node)
    assert earlier.exists() and not list(full_log_dir.glob("*.partial"))


def test_a_read_only_log_directory_completes_the_run_unlogged(node: Any,
                                                             full_log_dir: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(full_log_dir)], check=True)
    done = cli(node, *POSTINST)
    assert done.returncode == 0, done.stderr
    said = [ln for ln in done.stderr.splitlines() if "this run is not logged" in ln]
    assert len(said) == 1 and "Read-only file system" in said[0], done.stderr
    assert "Traceback" not in done.stderr
    upgraded(node)


# -- the terminal closed ----------------------------------------------------

def test_hangup_does_not_stop_a_step(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    set_setting(node, "consoles", "term_timeout", "2")
    stubborn = stubborn_console(node)
    proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(node, "stop-consoles", proc)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert journal(node)["steps"]["baseline"]["status"] == "done"
    assert stubborn.wait(timeout=10) == -signal.SIGKILL


def every_command_line() -> list[tuple[str, ...]]:
    """One valid command line for every command and action the parser knows
    (required arguments filled), so a command added later is tried too."""
    import argparse

    from ivle_maint.cli import build_parser

    def fill(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> list[tuple[str, ...]]:
        lines: list[tuple[str, ...]] = []
        args: list[str] = []
        subs = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs = action
            elif not action.option_strings and action.nargs not in ("?", "*"):
                args.append(str(next(iter(action.choices))) if action.choices else "1.1")
            elif action.required:
                args += [action.option_strings[0], "1.1"]
        if subs is None:
            return [(*words, *args)]
        for name, sub in subs.choices.items():
            lines += fill(sub, (*words, *args, name))
        return lines

    return fill(build_parser(), ())


def test_every_command_but_settings_needs_root_in_one_line(node: Any) -> None:
    from ivle_maint.gates import root

    lines = [line for line in every_command_line() if root.needs_root(line[0])]
    assert len(lines) > 20 and ("cluster", "refresh") in lines
    for line in lines:
        done = run(node, *line, user=NOBODY)
        assert done.returncode == 2, (line, done.stderr)
        assert done.stdout == "", line
        assert done.stderr.count("\n") == 1 and "needs root" in done.stderr, (line, done.stderr)
    assert node.service_running("apache2") and journal(node) == {}


# -- ivle-maint's own output on a full disk ----------------------------------------

def command_paths(parser: argparse.ArgumentParser,
                  words: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """ivle-maint's own words, then every command's ('db', 'db status'...)."""
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*words, name))


HELPS = list(command_paths(build_parser()))


@settings(max_examples=40, deadline=None)
@given(argv=st.one_of(st.sampled_from(HELPS).map(lambda words: [*words, "--help"]),
                      st.just(["--version"]), st.just(["-h"]),
                      st.just(["settings", "--spec"])))
def test_output_that_cannot_be_written_is_one_line_and_exit_1(argv: list[str]) -> None:
    """--help or --version on a full disk (`> FILE`): a traceback, as if a
    bug, where a listing's failure was one line."""
    with open(os.devnull, "w") as null, open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "ivle_maint", *argv], stdin=null,
                              stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
                              check=False)
    assert done.returncode == 1
    assert done.stderr == "ivle-maint: error: standard output: No space left on device\n"


@settings(max_examples=20, deadline=None)
@given(argv=st.sampled_from([[], ["--bogus"], ["settings", "--bogus"], ["nosuchcommand"]]))
def test_a_usage_error_on_a_full_disk_still_exits_2(argv: list[str]) -> None:
    with open(os.devnull, "w") as null, open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "ivle_maint", *argv], stdin=null,
                              stdout=null, stderr=full, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
                              check=False)
    assert done.returncode == 2
