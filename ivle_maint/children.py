"""Commands ivle-maint runs must not outlive it, nor a rerun overlap them.

Every command starts in a session of its own (so its whole process group
can be ended, the tool's own children with it) and with the kernel's
parent-death signal (PR_SET_PDEATHSIG): when ivle-maint dies, even by
SIGKILL, the command gets SIGKILL.  While it runs, a record in the run
directory names its group, its owner and its mark (a random value in its
environment, gates.environment.MARK); the next run under the node lock
ends what a dead owner left (a grandchild the parent-death signal does
not reach, an init script's action) before it starts any step, each
process only once gates.processes proves it the command's.

Work that runs beside the main thread (steps that overlap, user jails
remade in batches) runs in Workers: each call's outcome comes back to the
caller; when the caller is interrupted (signals reach the main thread
only) or fails, stop() ends every command this process waits for and
every worker's database wait (gates.waits.stop_workers), and the block
never ends with a worker thread still running.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MaintError
from .gates import processes, trusted, waits
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


_spawn_lock = threading.Lock()


def warm_messages() -> None:
    """Load the C library's message catalogue for the locale now.  A forked
    child holds a copy of every lock as it was: the catalogue's lock, taken
    for writing by another thread's first error message (strerror) while
    this one forks, stays taken in the child, which hangs before exec when
    it formats an errno itself, as sh's child does closing descriptors
    (seen with migrate and rebuild-jail at once).  Loaded, it is only read."""
    os.strerror(errno.EBADF)


# Seconds a fork may take to reach exec before its child counts as stuck.
SPAWN_GRACE = 10.0


@dataclass
class Spawn:
    """What spawning() saw: stuck is True when a child forked inside it never
    reached exec and was killed (its program never ran: safe to try again)."""

    stuck: bool = False


def _stuck_children(me: int) -> list[int]:
    """Our children still running our own program with our own arguments:
    forked, never exec'ed (an exec'ed program has its own command line)."""
    mine = Path(f"/proc/{me}/cmdline").read_bytes()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[1]) == me and (entry / "cmdline").read_bytes() == mine:
                found.append(int(entry.name))
    return found


@contextmanager
def spawning() -> Iterator[Spawn]:
    """One thread forks at a time, the catalogue loaded (warm_messages), and
    the fork bounded: a child of a threaded process can hang between fork and
    exec on a C library lock another thread held at the fork; after
    SPAWN_GRACE seconds such a child is killed, so the waiting parent goes on
    (Spawn.stuck says so) instead of waiting for ever."""
    spawn, done = Spawn(), threading.Event()

    def watch(me: int) -> None:
        if done.wait(SPAWN_GRACE):
            return
        for pid in _stuck_children(me):
            spawn.stuck = True  # before the kill: the parent wakes at once
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                log.warning("a child forked to run a command never reached exec "
                            "within %gs: killed (pid %d)", SPAWN_GRACE, pid)

    with _spawn_lock:
        warm_messages()
        watcher = threading.Thread(target=watch, args=(os.getpid(),), daemon=True,
                                   name="spawn-watch")
        try:
            with waits.deferred():
                watcher.start()
            yield spawn
        finally:
            with waits.deferred():  # a signal here waits: no watcher outlives the block
                done.set()
                if watcher.ident is not None:
                    watcher.join()


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


@contextmanager
def tracked_run(run_dir: Path) -> Iterator[None]:
    """Record this run's children under RUN_DIR while the block runs."""
    global _records
    previous, _records = _records, run_dir / "children"
    try:
        yield
    finally:
        _records = previous


@dataclass(frozen=True)
class Child:
    """A started command: its group, and its record in the run directory."""

    pid: int
    path: Path | None


# The command groups this process waits for now, whichever thread waits:
# stop() ends them.  A command started once the workers are told to stop
# is ended as soon as it is noted (the check and the note share the lock).
_live: set[int] = set()
_live_lock = threading.Lock()


def new_mark() -> str:
    """A fresh mark for one command's environment (gates.environment.MARK)."""
    return secrets.token_hex(16)


def record(pid: int, argv: Sequence[str], mark: str | None = None) -> Child:
    """Note a started command whose group must not outlive this run; MARK:
    the value of environment.MARK it was started with (new_mark)."""
    with _live_lock:
        _live.add(pid)
        if waits.stopping():
            end_now(pid)
    return Child(pid, _write_record(pid, argv, mark))


def _write_record(pid: int, argv: Sequence[str], mark: str | None) -> Path | None:
    if _records is None:
        return None
    data = {"pid": pid, "start": start_time(pid), "argv": list(argv), "mark": mark,
            "owner": os.getpid(), "owner_start": start_time(os.getpid())}
    path = _records / f"{pid}.json"
    try:
        _records.mkdir(mode=0o700, exist_ok=True)
        # Not flushed: a reboot ends the command anyway.
        replace_file(path, json.dumps(data).encode(), mode=0o600, durable=False)
    except (OSError, MaintError) as exc:  # the parent-death signal still covers the child
        log.warning("cannot record child %d: %s", pid, exc)
        return None
    return path


def forget(child: Child) -> None:
    with _live_lock:
        _live.discard(child.pid)
    if child.path is not None:
        child.path.unlink(missing_ok=True)


def end_running() -> None:
    """End every command group this process waits for (a worker's)."""
    with _live_lock:
        for pid in _live:
            end_now(pid)


def _owner_alive(data: dict[str, object]) -> bool:
    owner, owner_start = data.get("owner"), data.get("owner_start")
    if not isinstance(owner, int) or owner_start is None:
        return False
    return start_time(owner) == owner_start


def end_leftovers(run_dir: Path, reporter: Reporter) -> list[str]:
    """End the command groups a dead run left; returns what was ended.
    Only processes the gate proves the recorded command's are signalled
    (gates.processes.end_leftover_group: the leader itself, or the mark)."""
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
        start, mark = data.get("start"), data.get("mark")
        if pgid > 1 and processes.leftover_members(pgid, since, start, mark):
            command = " ".join(str(a) for a in data.get("argv", []))[:200]
            reporter.info(f"ending {command} (process group {pgid}), left running by a "
                          f"killed ivle-maint (pid {data.get('owner')})")
            processes.end_leftover_group(pgid, since, start, mark, grace=TERM_GRACE)
            ended.append(command)
        path.unlink(missing_ok=True)
    return ended


def end_now(pid: int) -> None:
    """End a command group of this run at once (its wait was interrupted)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# -- work beside the main thread ----------------------------------------------


Outcome = tuple[str, Any, BaseException | None]  # (key, value, exception)


class Workers:
    """Calls running in threads beside the caller (workers()); each call's
    outcome, a value or an exception, comes back through wait() and take():
    a signal can interrupt wait(), never lose an outcome taken."""

    def __init__(self) -> None:
        self._ended = threading.Condition()
        self._outcomes: list[Outcome] = []  # ended, not taken yet
        self._threads: dict[str, threading.Thread] = {}
        self._waiting: set[str] = set()

    def start(self, key: str, call: Callable[[], Any]) -> None:
        def work() -> None:
            try:
                outcome: Outcome = (key, call(), None)
            except BaseException as exc:  # the caller decides what it means
                outcome = (key, None, exc)
            with self._ended:
                self._outcomes.append(outcome)
                self._ended.notify()

        thread = threading.Thread(target=work, name=f"ivle-maint {key}")
        # Started and noted whole: a signal inside start() would leave a
        # thread running that join() does not know is started.
        with waits.deferred():
            thread.start()
            self._threads[key] = thread
            self._waiting.add(key)

    @property
    def running(self) -> set[str]:
        """Keys whose outcome take() has not returned yet."""
        return set(self._waiting)

    def wait(self) -> None:
        """Until an outcome can be taken; a signal interrupts it (main thread)."""
        with self._ended:
            while not self._outcomes:
                # A signal the kernel gives a worker thread wakes no one:
                # Python runs its handler once the main thread wakes up.
                self._ended.wait(SIGNAL_LOOK)

    def take(self) -> Outcome:
        """The first outcome not taken (wait() first)."""
        with self._ended:
            outcome = self._outcomes.pop(0)
        self._waiting.discard(outcome[0])
        return outcome

    def stop(self) -> None:
        """End the workers' commands and database waits: they unwind."""
        waits.stop_workers()
        end_running()

    def join(self) -> list[Outcome]:
        """Wait until every worker has ended, whatever signal comes (it is
        received already, or will be acted on by the caller); returns the
        outcomes not taken."""
        for key, thread in self._threads.items():
            told = False
            while thread.is_alive():
                try:
                    thread.join()
                except (KeyboardInterrupt, waits.Terminated):
                    if not told:
                        log.info("waiting for %s to stop", key)
                        told = True
        left = []
        while self._waiting:
            left.append(self.take())
        return left


SIGNAL_LOOK = 0.2  # seconds between a waiting main thread's looks for a signal
_depth = [0]  # workers() blocks open: the last to close lets new ones run
_depth_lock = threading.Lock()


@contextmanager
def workers() -> Iterator[Workers]:
    """Workers whose threads have all ended when the block ends: an exception
    in the block (an interruption, a failure of the caller's) stops them."""
    warm_messages()  # before any worker runs (spawning)
    pool = Workers()
    with _depth_lock:
        _depth[0] += 1
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    finally:
        try:
            pool.join()
        finally:
            with _depth_lock:
                _depth[0] -= 1
                if not _depth[0]:
                    waits.resume_workers()
