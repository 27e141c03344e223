"""Finding and stopping the processes that keep user jails in use.

IVLE's console backends (``/usr/bin/python <share>/services/python-console
PORT MAGIC``) run chrooted in a user's jail as the student; they, and any
other process whose root, working directory, program or open files lie
inside a user's jail (MOUNTS/LOGIN/...), hold those mounts busy across an
upgrade.  They get SIGTERM, then after [consoles] term_timeout SIGKILL.
Never signalled: a process that merely sits in the mounts directory
itself, PID 1, ivle-maint and its ancestors, and PostgreSQL's processes.

psutil does the process table (it is well kept across kernels and guards
against pid reuse); the root directory and the descriptors (psutil lists
regular files only, not directories) come from readlink on /proc.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import psutil

from .. import jaildir
from ..config import Settings
from ..errors import MaintError
from ..gates.text import shown
from ..mountinfo import is_at_or_below, is_below
from ..output import Reporter

CONSOLE_NAME = "python-console"
KILL_WAIT = 5.0  # seconds a SIGKILLed process may take to go
ROUNDS = 3  # scans: a console started during the first kill is caught next


@dataclass(frozen=True)
class JailProcess:
    """A process that uses a jail, and why we think so."""

    pid: int
    user: str  # the login of its uid, or the uid as a number
    uid: int
    cmdline: tuple[str, ...]
    reason: str  # "python-console", "root", "cwd", "program", "open file"
    path: str = ""  # the first path under the jail mounts that matched
    jail: str | None = None  # the login whose jail it uses, when known
    places: tuple[tuple[str, str], ...] = ()  # every (kind, path) under the mounts

    @property
    def command(self) -> str:
        """The command line for a message: a student wrote it (gates.text)."""
        return " ".join(shown(arg) for arg in self.cmdline) or "?"

    def describe(self) -> str:
        """'pid 42 (user 1001, jail alice): /usr/bin/python ... [cwd /...]'."""
        jail = f", jail {self.jail}" if self.jail and self.jail != self.user else ""
        where = f"{self.reason} {self.path}" if self.path else self.reason
        return f"pid {self.pid} (user {self.user}{jail}): {self.command} [{where}]"


@dataclass(frozen=True)
class Stopped:
    """One process stopped: how it ended."""

    process: JailProcess
    how: str  # "terminated" (SIGTERM was enough), "killed" (SIGKILL) or "vanished"


@dataclass(frozen=True)
class ConsolesResult:
    """What stop_consoles did."""

    stopped: tuple[Stopped, ...]
    spared: tuple[JailProcess, ...]  # ivle-maint, its ancestors, init, the database

    @property
    def count(self) -> int:
        return len(self.stopped)

    @property
    def killed(self) -> int:
        return sum(1 for s in self.stopped if s.how == "killed")

    @property
    def summary(self) -> str:
        if not self.stopped:
            return "no console processes"
        return f"stopped {self.count} processes ({self.killed} needed SIGKILL)"


def _jail_of(path: str, top: str) -> str | None:
    parts, top_parts = PurePosixPath(path).parts, PurePosixPath(top).parts
    return parts[len(top_parts)] if len(parts) > len(top_parts) else None


def is_console(cmdline: list[str] | tuple[str, ...], share: str | os.PathLike[str] | None) -> bool:
    """Does the command line run IVLE's python-console (from share, if given)?"""
    for arg in cmdline[:2]:
        path = PurePosixPath(os.path.normpath(arg)) if arg else None
        if path is None or path.name != CONSOLE_NAME or path.parent.name != "services":
            continue
        if share is None or str(path) == os.path.normpath(f"{share}/services/{CONSOLE_NAME}"):
            return True
    return False


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _places(proc: psutil.Process) -> Iterator[tuple[str, str]]:
    """(kind, path) of everything a process keeps open, cheapest first."""
    pid = proc.pid
    root = _readlink(f"/proc/{pid}/root")
    if root:
        yield "root", root
    for kind, getter in (("cwd", proc.cwd), ("program", proc.exe)):
        try:
            value = getter()
        except (psutil.AccessDenied, OSError):
            continue
        if value:
            yield kind, value
    # psutil.open_files() lists regular files only, and an open directory
    # holds a mount busy too: read the descriptor links themselves.
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        target = _readlink(f"/proc/{pid}/fd/{fd}")
        if target and target.startswith("/"):  # not socket:[..], pipe:[..]
            yield "open file", target


def _protected() -> dict[int, str]:
    """Ourselves, our ancestors (dpkg, the shell) and init: never signalled."""
    me = psutil.Process()
    spared = {p.pid: "ivle-maint or its caller" for p in [me, *me.parents()]}
    spared[1] = "init (PID 1)"
    return spared


DATABASE_NAMES = frozenset({"postgres", "postmaster"})


def is_database_server(proc: psutil.Process, jp: JailProcess) -> bool:
    """PostgreSQL's postmaster or a backend: by name, program or its system user."""
    names = {os.path.basename(jp.cmdline[0]) if jp.cmdline else "", jp.user}
    # A backend's command line is rewritten ('postgres: ivle ivle ...').
    names.add(jp.cmdline[0].split(":")[0] if jp.cmdline else "")
    with contextlib.suppress(psutil.Error, OSError):
        names |= {proc.name(), os.path.basename(proc.exe() or "")}
    return bool(names & DATABASE_NAMES)


def scan(
    top: str | os.PathLike[str],
    *,
    share: str | os.PathLike[str] | None = None,
    consoles: bool = True,
    inclusive: bool = False,
) -> list[tuple[psutil.Process, JailProcess]]:
    """Processes inside a user's jail: root, cwd, program or an open file
    strictly below top (top/LOGIN/...).  A python-console of share (any
    share when None, if consoles) is labelled as such, but only counts
    inside a jail too.  With inclusive, top itself counts (who holds the
    mount at top busy).  Vanished processes are skipped.

    top must already be a real path (os.path.realpath): /proc shows real paths.
    """
    top = str(top)
    inside = is_at_or_below if inclusive else is_below
    found = []
    for proc in psutil.process_iter(["cmdline", "username", "uids", "status"]):
        try:
            info: dict[str, Any] = proc.info
            if info["status"] == psutil.STATUS_ZOMBIE:
                continue  # holds nothing any more
            places = tuple((k, p) for k, p in _places(proc) if inside(p, top))
            if not places:
                continue  # outside every jail: never ours to stop
            cmdline = tuple(info["cmdline"] or ())
            reason, path = places[0]
            if consoles and is_console(cmdline, share):
                reason = CONSOLE_NAME
            uid = info["uids"].real if info["uids"] else -1
            user = info["username"] or str(uid)
            jail = _jail_of(path, top)
            found.append(
                (proc, JailProcess(proc.pid, user, uid, cmdline, reason, path, jail, places))
            )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # ended while we looked: nothing to stop
    return found


def holders(path: str | os.PathLike[str]) -> list[JailProcess]:
    """Processes that use path or anything below it (who keeps a mount busy)."""
    return [jp for _, jp in scan(os.path.realpath(path), consoles=False, inclusive=True)]


def _gone(proc: psutil.Process) -> bool:
    # A zombie has ended; reaping it is its parent's business (our caller's,
    # if it is our child: it may want the exit status).
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until procs end (zombies count as ended); the ones still alive."""
    # psutil.wait_procs would wait out the timeout for a zombie that is not
    # our child, so poll instead.
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    pause = 0.002  # most consoles end within milliseconds of SIGTERM
    while alive and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _signal(procs: list[psutil.Process], kill: bool) -> set[int]:
    """Send SIGKILL or SIGTERM; the pids that had already gone."""
    vanished = set()
    for proc in procs:
        try:
            # psutil refuses to signal a pid that now belongs to another process.
            if kill:
                proc.kill()
            else:
                proc.terminate()
        except psutil.NoSuchProcess:
            vanished.add(proc.pid)
    return vanished


def stop_processes(
    found: list[tuple[psutil.Process, JailProcess]], reporter: Reporter, term_timeout: float
) -> list[Stopped]:
    """SIGTERM, wait up to term_timeout, SIGKILL the rest; each one reported."""
    procs = [proc for proc, _ in found]
    by_pid = {proc.pid: jp for proc, jp in found}
    vanished = _signal(procs, kill=False)
    stubborn = _wait(procs, term_timeout)
    for proc in stubborn:
        reporter.warn(f"pid {proc.pid} ({by_pid[proc.pid].user}) ignored SIGTERM "
                      f"for {term_timeout:g}s: sending SIGKILL")  # fmt: skip
    _signal(stubborn, kill=True)
    undead = _wait(stubborn, KILL_WAIT)
    if undead:
        names = ", ".join(by_pid[p.pid].describe() for p in undead)
        raise MaintError(f"{len(undead)} processes survived SIGKILL (stuck in the kernel?): "
                         f"{names}")  # fmt: skip
    killed = {p.pid for p in stubborn}
    stopped = []
    for proc, jp in found:
        how = "killed" if proc.pid in killed else "terminated"
        how = "vanished" if proc.pid in vanished else how
        stopped.append(Stopped(jp, how))
        reporter.info(f"{how} {jp.describe()}")
    return stopped


def stop_consoles(
    mounts: str | os.PathLike[str],
    reporter: Reporter,
    *,
    share: str | os.PathLike[str] | None = None,
    term_timeout: float = 10.0,
) -> ConsolesResult:
    """The step: stop every console and every process using the jail mounts.

    Repeats the scan until it comes back empty, so the result is checked.
    """
    top = jaildir.resolve(mounts)
    protected = _protected()
    stopped: list[Stopped] = []
    spared: dict[int, tuple[JailProcess, str]] = {}

    def targets() -> list[tuple[psutil.Process, JailProcess]]:
        found = []
        for proc, jp in scan(top, share=share):
            why = protected.get(proc.pid)
            if why is None and is_database_server(proc, jp):
                why = "the database server"
            if why is None:
                found.append((proc, jp))
            else:
                spared.setdefault(proc.pid, (jp, why))
        return found

    for _ in range(ROUNDS):
        found = targets()
        if not found:
            break
        reporter.progress("stopping console processes", len(stopped), len(stopped) + len(found))
        stopped += stop_processes(found, reporter, term_timeout)
    else:
        left = targets()
        if left:
            raise MaintError(f"console processes keep appearing: {left[0][1].describe()} "
                             f"(is the web server still running?)")  # fmt: skip
    for jp, why in spared.values():
        reporter.warn(f"not stopping {why}: {jp.describe()}")
    return ConsolesResult(tuple(stopped), tuple(jp for jp, _ in spared.values()))


def list_consoles(
    mounts: str | os.PathLike[str], *, share: str | os.PathLike[str] | None = None
) -> list[JailProcess]:
    """Every process stop_consoles would stop (and the spared ones)."""
    return [jp for _, jp in scan(jaildir.resolve(mounts), share=share)]


def stop_consoles_for(settings: Settings, reporter: Reporter) -> ConsolesResult:
    """stop_consoles for this node's ivle.conf and [consoles] term_timeout."""
    ivle = settings.ivle_conf()
    return stop_consoles(
        jaildir.check(ivle),
        reporter,
        share=ivle.share,
        term_timeout=float(settings["consoles"]["term_timeout"]),
    )
