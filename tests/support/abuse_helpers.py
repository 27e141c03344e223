"""Helpers the fault-and-abuse cases share: reading ivle-maint's error and
resume lines, the uninterrupted upgrade a killed one is compared with,
killing a run at the right moment, the live processes a kill may leave,
another runner holding the migration lock, and what "nothing done" means
(the site untouched, or the old site untouched by the after-phase).

A plain module (not fixtures) so that a case imports what it uses; what the
integration tests share too (cli, set_setting, OLD_KEYS...) is in
support/upgrade_helpers.py.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ivle_maint.db.lock import LOCK_ID
from support.upgrade_helpers import (
    OLD_KEYS,
    at_version_1_0,
    final_state,
    journal,
    marker_keys,
    media_version,
    postinst,
    preinst,
    set_setting,
    unpack,
)

ERROR_PREFIX = "ivle-maint: error:"
RESUME_PREFIX = "ivle-maint: resume with: "


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """ivle-maint's error lines; a traceback is never an answer."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    errors = error_lines(done)
    assert len(errors) == 1, done.stderr
    return errors[0]


def upgraded_state(node: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 of NODE leaves."""
    done = preinst(node)
    assert done.returncode == 0, done.stderr
    unpack(node)
    done = postinst(node)
    assert done.returncode == 0, done.stderr
    return final_state(node)


# Per process (an xdist worker), by build_node's arguments.
_REFERENCES: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}


def reference_state(node_factory: Callable[..., Any], **build: Any) -> dict[str, Any]:
    """upgraded_state of a fresh 1.0 node built with BUILD: upgraded once per
    worker for each BUILD and kept (each case used to upgrade a node of its
    own for it).  final_state holds nothing particular to one node (no
    path, port or database name): nodes built alike end alike."""
    key = tuple(sorted(build.items()))
    if key not in _REFERENCES:
        _REFERENCES[key] = upgraded_state(at_version_1_0(node_factory(**build)))
    return copy.deepcopy(_REFERENCES[key])


def live_processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, cmdline, environ) of every process that is not a zombie; an
    environ that cannot be read is empty (the process may be gone)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        proc = Path("/proc", entry.name)
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[1]
        except OSError:
            continue
        if state.split()[0] == b"Z":
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            environ = b""
        yield int(entry.name), cmdline, environ


def resume_line(stderr: str) -> str:
    """The one command ivle-maint says to resume with."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(RESUME_PREFIX)]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix(RESUME_PREFIX)


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float,
              poll: float = 0.01, delay: float = 0.0) -> None:
    """SIGKILL PROC (a running ivle-maint) DELAY seconds after READY() holds
    (0: as soon as it does: inside a step that has just begun; more: further
    into it); it must not end by itself before.  On a failed wait PROC is
    killed too, never left running."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"ended before it was killed: {proc.communicate()}")
            assert time.monotonic() < deadline, f"not ready after {timeout} s"
            time.sleep(poll)
        time.sleep(delay)
        if proc.poll() is not None:
            raise AssertionError(f"ended {delay} s after it was ready, before it was "
                                 f"killed: {proc.communicate()}")
    finally:
        proc.send_signal(signal.SIGKILL)  # nothing once it has ended
        proc.communicate()


def wait_until_gone(pids: Callable[[], list[int]], timeout: float, message: str) -> None:
    """Until PIDS() is empty (what the kernel ends with a killed parent)."""
    deadline = time.monotonic() + timeout
    while pids():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def old_site_untouched(node) -> None:
    """Nothing of the after-phase ran: old schema, old media, old code."""
    assert marker_keys(node) in ([], OLD_KEYS)  # the baseline at most
    assert media_version(node) == "1.0"
    assert node.installed_version() == "1.0" and node.template_version() == "1.0"
    steps = journal(node).get("steps", {})
    assert not {"migrate", "rebuild-jail", "media-version", "start-web"} & set(steps)


def hold_migration_lock(node):
    """Another runner holds the lock: the before-phase's baseline fails."""
    set_setting(node, "database", "lock_timeout", "1")
    holder = node.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
    holder.commit()
    return holder


def assert_untouched(site: Any) -> None:
    """Refused before anything started: serving, no journal."""
    assert site.service_running("apache2")
    assert journal(site) == {}


def node_pids(node: Any, argv: bytes) -> list[int]:
    """Live processes of this node (by its IVLECONF) whose argv is ARGV."""
    ours = f"IVLECONF={node.conf_dir}\0".encode()
    return [pid for pid, cmdline, environ in live_processes()
            if cmdline == argv and ours in environ]


def fill(path: Path, chunk: bytes = b"\0" * 4096) -> None:
    """Write PATH until its file system is full (ENOSPC ends it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, chunk):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)
