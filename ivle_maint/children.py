"""Commands ivle-maint runs must not outlive it, nor a rerun overlap them.

Every command starts in a session of its own (so its whole process group
can be ended, the tool's own children with it) and with the kernel's
parent-death signal (PR_SET_PDEATHSIG): when ivle-maint dies, even by
SIGKILL, the command gets SIGKILL.  While it runs, a record in the run
directory names its group and its owner; the next run under the node lock
ends what a dead owner left (a grandchild the parent-death signal does not
reach, an init script's action) before it starts any step.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import MaintError
from .gates import trusted
from .gates.environment import UMASK
from .gates.rewrite import replace_file
from .output import Reporter

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
TERM_GRACE = 10.0  # seconds a leftover group gets between SIGTERM and SIGKILL

_records: Path | None = None  # RUN/children while a run holds the node lock


def _prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def preexec_for_child() -> Callable[[], None]:
    """A preexec function: die with this process (checked against a race),
    with the gate's umask (gates/environment.py)."""
    parent = os.getpid()

    def preexec() -> None:
        os.umask(UMASK)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _group_members(pgid: int, since: int) -> list[int]:
    """Live processes in group PGID started no earlier than SINCE."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid and int(fields[19]) >= since:
            members.append(int(entry.name))
    return members


@contextmanager
def tracked_run(run_dir: Path) -> Iterator[None]:
    """Record this run's children under RUN_DIR while the block runs."""
    global _records
    previous, _records = _records, run_dir / "children"
    try:
        yield
    finally:
        _records = previous


def record(pid: int, argv: Sequence[str]) -> Path | None:
    """Note a started command whose group must not outlive this run."""
    if _records is None:
        return None
    data = {"pid": pid, "start": start_time(pid), "argv": list(argv),
            "owner": os.getpid(), "owner_start": start_time(os.getpid())}
    path = _records / f"{pid}.json"
    try:
        _records.mkdir(mode=0o700, exist_ok=True)
        replace_file(path, json.dumps(data).encode(), mode=0o600)
    except (OSError, MaintError) as exc:  # the parent-death signal still covers the child
        log.warning("cannot record child %d: %s", pid, exc)
        return None
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _owner_alive(data: dict[str, object]) -> bool:
    owner, owner_start = data.get("owner"), data.get("owner_start")
    if not isinstance(owner, int) or owner_start is None:
        return False
    return start_time(owner) == owner_start


def end_leftovers(run_dir: Path, reporter: Reporter) -> list[str]:
    """End the command groups a dead run left; returns what was ended."""
    ended = []
    directory = run_dir / "children"
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(trusted.read(path, trusted.STATE).decode("utf-8"))
            pgid, since = int(data["pid"]), int(data.get("start") or 0)
        except (OSError, ValueError, KeyError, TypeError, MaintError):
            path.unlink(missing_ok=True)
            continue
        if _owner_alive(data):
            continue  # a live ivle-maint's (one that takes no node lock)
        members = _group_members(pgid, since)
        if members:
            command = " ".join(str(a) for a in data.get("argv", []))[:200]
            reporter.info(f"ending {command} (process group {pgid}), left running by a "
                          f"killed ivle-maint (pid {data.get('owner')})")
            _end_group(pgid, since)
            ended.append(command)
        path.unlink(missing_ok=True)
    return ended


def end_now(pid: int) -> None:
    """End a command group of this run at once (its wait was interrupted)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _end_group(pgid: int, since: int) -> None:
    """SIGTERM the group, SIGKILL what is left after the grace, wait until gone."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_members(pgid, since):
                return
            time.sleep(0.05)

