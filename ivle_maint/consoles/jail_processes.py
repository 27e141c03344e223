"""Stopping the processes that keep user jails in use.

IVLE's console backends (``/usr/bin/python <share>/services/python-console
PORT MAGIC``) run chrooted in a user's jail as the student; they, and any
other student process inside a jail, hold the jail mounts busy across an
upgrade.  Which processes those are, and every signal sent to them, is
decided by the gate ``ivle_maint.gates.processes`` from kernel facts
(root, cwd, mount namespace, open files, uid), never from a name or a
command line; see its docstring for the rule.  Here the command line only
labels a python-console in listings.

What a person reads is bounded: one line per jail (the first JAIL_LINES
jails, then one for the rest), whatever the number of processes; each
process is in the log at debug level.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from .. import jaildir
from ..config import Settings
from ..gates import processes
from ..gates.processes import Found, Verdict
from ..gates.text import shown
from ..mountinfo import is_at_or_below
from ..output import Reporter

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

CONSOLE_NAME = "python-console"
JAIL_LINES = 10  # jails named one line each; the rest summed up in one more


@dataclass(frozen=True)
class JailProcess:
    """A process that uses a jail, and why we think so (for a person to read)."""

    pid: int
    user: str  # the login of its uid, or the uid as a number
    uid: int
    cmdline: tuple[str, ...]
    reason: str  # "python-console", "root", "cwd", "program", "open file"
    path: str = ""  # the first path in the jail that matched
    jail: str | None = None  # the login whose jail it uses, when known
    places: tuple[tuple[str, str], ...] = ()  # every (kind, path) under the mounts
    ivle_user: bool = True  # its uid is an IVLE user's (else: not ivle-maint's to stop)

    @property
    def command(self) -> str:
        """The command line for a message: a student wrote it (gates.text)."""
        return shown(" ".join(self.cmdline), processes.COMMAND_CHARS) or "?"

    def describe(self) -> str:
        """'pid 42 (user 1001, jail alice): /usr/bin/python ... [cwd /...]'."""
        jail = f", jail {shown(self.jail)}" if self.jail and self.jail != self.user else ""
        where = f"{self.reason} {self.path}" if self.path else self.reason
        return f"pid {self.pid} (user {shown(self.user)}{jail}): {self.command} " \
               f"[{shown(where)}]"


@dataclass(frozen=True)
class Stopped:
    """One process stopped: how it ended."""

    process: JailProcess
    how: str  # "terminated" (SIGTERM was enough), "killed" (SIGKILL) or "vanished"


@dataclass(frozen=True)
class ConsolesResult:
    """What stop_consoles_in did."""

    stopped: tuple[Stopped, ...]
    spared: tuple[JailProcess, ...]  # ivle-maint, its ancestors, init

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


def is_console(cmdline: list[str] | tuple[str, ...], share: str | os.PathLike[str] | None) -> bool:
    """Does the command line run IVLE's python-console (from share, if given)?

    A label for listings only: it never decides what is signalled.
    """
    for arg in cmdline[:2]:
        path = PurePosixPath(os.path.normpath(arg)) if arg else None
        if path is None or path.name != CONSOLE_NAME or path.parent.name != "services":
            continue
        if share is None or str(path) == os.path.normpath(f"{share}/services/{CONSOLE_NAME}"):
            return True
    return False


def _shown(found: Found, top: str, share: str | os.PathLike[str] | None,
           consoles: bool = True) -> JailProcess:  # fmt: skip
    reason = found.decision.kind
    if consoles and is_console(found.cmdline, share):
        reason = CONSOLE_NAME
    places = tuple((k, p) for k, p in found.facts.places if is_at_or_below(p, top))
    return JailProcess(found.pid, found.user, found.facts.uid, found.cmdline, reason,
                       found.decision.path, found.decision.jail, places,
                       found.decision.verdict is not Verdict.FOREIGN)  # fmt: skip


def _tree(
    top: str, src: str | os.PathLike[str] | None, not_jails: Iterable[str]
) -> processes.JailTree:
    real_src = os.path.realpath(src) if src else None
    return processes.jail_tree(top, src=real_src, not_jails=not_jails)


def scan(
    top: str | os.PathLike[str],
    *,
    share: str | os.PathLike[str] | None = None,
    consoles: bool = True,
    src: str | os.PathLike[str] | None = None,
) -> list[tuple[psutil.Process, JailProcess]]:
    """Processes inside a user's jail, as the gate finds them (whatever its
    verdict); a python-console of share is labelled as such (consoles).

    top must already be a real path (os.path.realpath): /proc shows real paths.
    """
    top = str(top)
    found = processes.scan(_tree(top, src, ()), processes.protected())
    return [(f.proc, _shown(f, top, share, consoles)) for f in found]


def _count(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _per_jail(lines: dict[str, str], rest: str) -> list[str]:
    """The first JAIL_LINES lines, then one for the rest."""
    named = [f"jail {shown(jail)}: {text}" for jail, text in list(lines.items())[:JAIL_LINES]]
    more = len(lines) - JAIL_LINES
    return named + ([f"and {more} more jails: {rest}"] if more > 0 else [])


def _report(stopped: list[Stopped], ignored: list[JailProcess], term_timeout: float,
            reporter: Reporter) -> None:  # fmt: skip
    """One line per jail, bounded; every process in the log at debug level."""
    if ignored:
        by_jail: dict[str, list[int]] = {}
        for jp in ignored:
            by_jail.setdefault(jp.jail or "?", []).append(jp.pid)
        lines = {}
        for jail, pids in by_jail.items():
            more = f" and {len(pids) - 3} more" if len(pids) > 3 else ""
            listed = ", ".join(map(str, pids[:3])) + more
            lines[jail] = (f"{_count(len(pids))} ignored SIGTERM for {term_timeout:g}s "
                           f"(pid {listed}): sending SIGKILL")  # fmt: skip
        for line in _per_jail(lines, f"{_count(len(ignored))} in all ignored SIGTERM"):
            reporter.warn(line)
    counts: Counter[str] = Counter()
    killed: Counter[str] = Counter()
    for s in stopped:
        log.debug("%s %s", s.how, s.process.describe())
        counts[s.process.jail or "?"] += 1
        killed[s.process.jail or "?"] += s.how == "killed"
    lines = {jail: f"{_count(n)} stopped ({killed[jail]} needed SIGKILL)"
             for jail, n in counts.items()}  # fmt: skip
    rest = sum(list(counts.values())[JAIL_LINES:])
    rest_killed = sum(killed[j] for j in list(counts)[JAIL_LINES:])
    for line in _per_jail(lines, f"{_count(rest)} stopped ({rest_killed} needed SIGKILL)"):
        reporter.info(line)


def stop_consoles_in(
    mounts: str | os.PathLike[str],
    reporter: Reporter,
    *,
    share: str | os.PathLike[str] | None = None,
    term_timeout: float = 10.0,
    src: str | os.PathLike[str] | None = None,
    not_jails: Iterable[str] = (),
) -> ConsolesResult:
    """Stop every student process in the jails below MOUNTS (the gate's
    empty_jails), and report it in a bounded number of lines.

    src: the jail sources ([paths][[jails]] src), where IVLE's users are
    found too; not_jails: the names in src that are no user's jail.
    """
    top = jaildir.resolve(mounts)
    tree = _tree(top, src, not_jails)

    def progress(left: int) -> None:
        reporter.progress("stopping console processes", 0, left)

    emptied = processes.empty_jails(tree, term_timeout=term_timeout, progress=progress)
    stopped = [Stopped(_shown(e.found, top, share), e.how) for e in emptied.ended]
    ignored = [_shown(f, top, share) for f in emptied.ignored_term]
    _report(stopped, ignored, term_timeout, reporter)
    for found, why in emptied.spared:
        reporter.warn(f"not stopping {why}: {_shown(found, top, share).describe()}")
    spared = tuple(_shown(f, top, share) for f, _ in emptied.spared)
    return ConsolesResult(tuple(stopped), spared)


def list_consoles(
    mounts: str | os.PathLike[str],
    *,
    share: str | os.PathLike[str] | None = None,
    src: str | os.PathLike[str] | None = None,
) -> list[JailProcess]:
    """Every process in the jails: those stop_consoles_in would stop, and the others."""
    return [jp for _, jp in scan(jaildir.resolve(mounts), share=share, src=src)]


def _not_jails(src: str, *dirs: str | None) -> list[str]:
    """The names in src of the template and its build directory."""
    real = os.path.realpath(src)
    return [os.path.basename(os.path.realpath(d)) for d in dirs
            if d and os.path.dirname(os.path.realpath(d)) == real]  # fmt: skip


def _where(settings: Settings) -> tuple[str, str | None, list[str]]:
    """(the jail mounts directory, checked; the jail sources; the names in
    them that are no user's jail) of this node's ivle.conf."""
    ivle = settings.ivle_conf()
    jails = ivle.conf["paths"]["jails"]
    src = str(ivle.jail_src) if jails["src"] else None
    not_jails = _not_jails(src, jails["template"], jails["template_build"]) if src else []
    return jaildir.check(ivle), src, not_jails


def stop_consoles_for(settings: Settings, reporter: Reporter) -> ConsolesResult:
    """stop_consoles_in for this node's ivle.conf and [consoles] term_timeout."""
    mounts, src, not_jails = _where(settings)
    return stop_consoles_in(
        mounts,
        reporter,
        share=settings.ivle_conf().share,
        term_timeout=float(settings["consoles"]["term_timeout"]),
        src=src,
        not_jails=not_jails,
    )


def refuse_foreign_for(settings: Settings) -> None:
    """The preflight's twin of stop_consoles_for: MaintError (one line)
    naming a process in a jail that is no IVLE user's (an administrator's
    shell), which stop_consoles_in would refuse to stop, while the site is still up."""
    mounts, src, not_jails = _where(settings)
    processes.refuse_foreign(_tree(mounts, src, not_jails), site_up=True)
