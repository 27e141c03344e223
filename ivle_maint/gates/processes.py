"""Who may be signalled: the one place that decides, and the one that signals.

Rule.  ivle-maint signals a process that is not its own child only when
kernel facts a student cannot forge say it is a student's process inside
a user's jail; never from its name, its program's name or its command
line (those are the student's to choose: a student process called
``postgres`` is stopped like any other).  The facts:

- where it is: its root directory, working directory, program and open
  descriptors (``/proc/PID/root``, ``cwd``, ``exe``, ``fd/*``) strictly
  below the jail mounts directory (``MOUNTS/LOGIN/...``).  A process in
  another mount namespace (``/proc/PID/ns/mnt`` not ours) shows paths of
  its own making, so for it the identity (device, inode) of its root and
  of its working directory and their parents is compared with the jail
  tree's (a jail's root, ``home``, ``home/LOGIN``, ``tmp``, and the jail
  sources' ``src/LOGIN/...``).  A student's process in a user namespace
  of its own (``/proc/PID/ns/user`` not ours: made by the student, who
  may then mount a tmpfs and leave the jail's tree for it) counts as in
  the jail wherever its root is: IVLE's users run nowhere but in jails;
- whose it is: its real uid is an IVLE user's, that is the owner of a
  user's home in the jail tree (``src/LOGIN/home/LOGIN``, or
  ``MOUNTS/LOGIN/home/LOGIN``), root never, plus the database's
  ``login.unixid`` when the caller has them.  A home on a FUSE mount (a
  student's fusermount over it) is never asked: its daemon gives whatever
  owner it likes, and may never answer at all.  The effective uid is
  looked at too, but never makes a process a student's on its own: a
  student running a set-uid program keeps a student's real uid (stopped),
  while a root or staff process that took a student's effective uid to
  work in a jail keeps its own real uid (named, never killed).  A
  student process in the jail sources (``src/LOGIN``) counts as in the
  jail too.

Verdicts: OUTSIDE (not ours: never signalled), STUDENT (stopped),
PROTECTED (ivle-maint, its ancestors and PID 1: never
signalled, named in a warning) and FOREIGN (in a jail but not an IVLE
user's: an administrator's shell, say).  A FOREIGN process is never
signalled: ``empty_jails`` stops before signalling anything, with one
line naming it (pid, user, command, path) and asking the administrator
to leave the jail.

Stopping (``empty_jails``): SIGTERM to every student process found, up
to ``term_timeout`` seconds for them to end; then, until a scan finds the
jails empty, every one left (and every child it forked meanwhile) gets
SIGSTOP, which no process can catch and after which none can fork, then
SIGKILL.  That round repeats for at most FORCE_BOUND seconds after the
SIGTERM wait; past it, one line names what remains (pid, user, jail).
Every signal goes through a pidfd opened while psutil still vouches for
the process (its start time), held or opened for that one signal, so a
reused pid is never signalled; no pidfd, no signal.

A killed run's leftover commands (children.end_leftovers) are signalled
here too (end_leftover_group): only a process of the recorded group whose
leader is the recorded process, or that carries the command's mark.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING

from .. import mountinfo
from ..errors import MaintError
from ..mountinfo import is_at_or_below, is_below
from . import environment
from .text import ivle_maint, shown

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

FORCE_BOUND = 30.0  # seconds of SIGSTOP+SIGKILL rounds, after term_timeout, before giving up
KILL_WAIT = 5.0  # seconds a SIGKILLed process may take to go, per round
SETTLE = 1.0  # seconds a process outside IVLE's users may take to leave a jail (a launcher)
SHOWN = 3  # processes named in one line
COMMAND_CHARS = 200  # of a command line, in a message or the log (a student's may be 2 MB)


def preload() -> ModuleType:
    """psutil, loaded by the functions that look at processes, not with this
    module (cluster/presence imports it: `plan` lists no process and never
    pays for psutil).  An upgrade calls this before its first step
    (upgrade.preload): a broken python3-psutil fails with the site up."""
    import psutil  # deferred on purpose, see above

    return psutil


MAX_PIDFDS = 256  # pidfds held to poll for an end; beyond, one opened per signal
UP_LEVELS = 32  # parents of a working directory compared, another mount namespace

Identity = tuple[int, int]  # (st_dev, st_ino)


class Verdict(enum.Enum):
    OUTSIDE = "outside every jail"
    STUDENT = "a student's process in a jail"
    PROTECTED = "ivle-maint, its caller or init"
    FOREIGN = "in a jail, not an IVLE user's"


@dataclass(frozen=True)
class Facts:
    """What the kernel says of one process; nothing the process names itself."""

    pid: int
    uid: int  # real
    euid: int  # effective
    places: tuple[tuple[str, str], ...] = ()  # (kind, path): root, cwd, program, open file
    other_ns: bool = False  # another mount namespace than ivle-maint's
    identities: tuple[tuple[str, Identity], ...] = ()  # (kind, (dev, ino)), other_ns only
    other_userns: bool = False  # a user namespace of its own (a student can make one)


@dataclass(frozen=True)
class JailTree:
    """The jail tree and IVLE's users, as the decision needs them."""

    top: str  # the jail mounts directory, realpath'd
    users: Mapping[int, str] = field(default_factory=dict)  # uid -> login
    src: str | None = None  # the jail sources, realpath'd
    not_jails: frozenset[str] = frozenset()  # names in src that are no user's jail
    marks: Mapping[Identity, str | None] = field(default_factory=dict)  # -> login, None: a jail


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    kind: str = ""  # which fact: root, cwd, program, open file
    path: str = ""
    jail: str | None = None


def _below(path: str, top: str) -> str | None:
    """The first component of path below top, or None."""
    if not is_below(path, top):
        return None
    return PurePosixPath(path).parts[len(PurePosixPath(top).parts)]


def where(facts: Facts, tree: JailTree) -> Decision | None:
    """The first fact that puts the process in a jail (verdict unset)."""
    for kind, path in facts.places:
        login = _below(path, tree.top)
        if login is not None:
            return Decision(Verdict.OUTSIDE, kind, path, login)
    if facts.other_ns:
        for kind, ident in facts.identities:
            if ident in tree.marks:
                return Decision(Verdict.OUTSIDE, f"{kind} (mount namespace)",
                                dict(facts.places).get(kind.split()[0], "?"), tree.marks[ident])
    return None


def _in_src(facts: Facts, tree: JailTree) -> Decision | None:
    if tree.src is None:
        return None
    for kind, path in facts.places:
        login = _below(path, tree.src)
        if login is not None and login not in tree.not_jails:
            return Decision(Verdict.OUTSIDE, kind, path, login)
    return None


def decide(facts: Facts, tree: JailTree, protected: Mapping[int, str]) -> Decision:
    """The verdict on one process.  Pure: facts in, verdict out."""
    student = facts.uid in tree.users  # the real uid: see the module's docstring
    place = where(facts, tree) or (_in_src(facts, tree) if student else None)
    if place is None and student and facts.other_userns:
        root = dict(facts.places).get("root", "?")
        place = Decision(Verdict.OUTSIDE, "root (own user namespace)", root)
    if place is None:
        return Decision(Verdict.OUTSIDE)
    if facts.pid in protected:
        verdict = Verdict.PROTECTED
    else:
        verdict = Verdict.STUDENT if student else Verdict.FOREIGN
    jail = place.jail or tree.users.get(facts.uid)
    return Decision(verdict, place.kind, place.path, jail)


# -- gathering the facts ----------------------------------------------------


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _identity(path: str, *, follow: bool = True) -> Identity | None:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _places(base: str, top: str) -> Iterator[tuple[str, str]]:
    inside = False
    for kind, name in (("root", "root"), ("cwd", "cwd"), ("program", "exe")):
        target = _readlink(f"{base}/{name}")
        if target and target.startswith("/"):
            inside = inside or is_below(target, top)
            yield kind, target
    if inside:
        return  # decided: a student's million open files must not slow every scan
    # An open directory holds a mount busy as a file does.
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        return
    for fd in fds:
        target = _readlink(f"{base}/fd/{fd}")
        if target and target.startswith("/"):  # not socket:[..], pipe:[..]
            yield "open file", target


def _identities(base: str) -> Iterator[tuple[str, Identity]]:
    """(dev, ino) of the root, and of the cwd and its parents, as the process sees them."""
    root = _identity(f"{base}/root/")
    if root is not None:
        yield "root", root
    seen: set[Identity] = set()
    for level in range(UP_LEVELS):
        ident = _identity(f"{base}/cwd/" + "../" * level)
        if ident is None or ident in seen:
            return
        seen.add(ident)
        yield "cwd", ident


_OUR_NS = _readlink("/proc/self/ns/mnt")
_OUR_USERNS = _readlink("/proc/self/ns/user")


def live_task(proc: psutil.Process) -> str | None:
    """Where /proc shows the process: /proc/PID, or, when its first thread
    has exited (a zombie to ps) while others run on, /proc/PID/task/TID of
    a live one; None once every thread has ended."""
    import psutil  # see preload()

    pid = proc.pid
    if proc.status() != psutil.STATUS_ZOMBIE:
        return f"/proc/{pid}"
    try:
        tids = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
    except OSError:
        return None
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        if _readlink(f"{base}/cwd") is not None:  # alive: an ended task has no cwd
            return base
    return None


def facts_of(proc: psutil.Process, tree: JailTree) -> Facts | None:
    """The kernel facts of a live process (None, or psutil.Error, once it ended).

    Its open files are read only when its root, cwd and program are not
    in a jail (the first place in a jail decides: they could not change
    the verdict, and a student may hold a million of them open).
    """
    base = live_task(proc)
    if base is None:
        return None  # holds nothing any more
    uids = proc.uids()
    other = _readlink(f"{base}/ns/mnt") not in (None, _OUR_NS)
    other_user = _readlink(f"{base}/ns/user") not in (None, _OUR_USERNS)
    return Facts(proc.pid, uids.real, uids.effective, tuple(_places(base, tree.top)), other,
                 tuple(_identities(base)) if other else (), other_user)  # fmt: skip


def _owner(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_uid if stat.S_ISDIR(st.st_mode) and st.st_uid != 0 else None


def _daemon_fs(fstype: str) -> bool:
    """FUSE: a daemon's answers (a student may mount one with fusermount)."""
    return fstype in ("fuse", "fuseblk") or fstype.startswith(("fuse.", "fuseblk."))


def _daemon_mounts(trees: Iterable[str]) -> list[str]:
    """Mount points in TREES (or holding them) of filesystems a daemon answers
    for, from the kernel's table: a stat there asks the daemon."""
    roots = list(trees)
    return [m.mountpoint for m in mountinfo.read() if _daemon_fs(m.fstype) and any(
        is_at_or_below(m.mountpoint, r) or is_at_or_below(r, m.mountpoint) for r in roots)]


def _listdir(path: str | None) -> list[str]:
    if not path:
        return []
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def jail_tree(
    top: str,
    *,
    src: str | None = None,
    not_jails: Iterable[str] = (),
    unixids: Mapping[int, str] | None = None,
) -> JailTree:
    """The jail tree under top (and src), with IVLE's users found in it.

    not_jails: names under src that are no user's jail (the template and
    its build directory); unixids: login.unixid -> login, when known.
    """
    skip = frozenset(not_jails)
    users: dict[int, str] = dict(unixids or {})
    marks: dict[Identity, str | None] = {}
    daemons = _daemon_mounts(p for p in (top, src) if p)

    def answered(path: str) -> bool:
        """On a filesystem a daemon answers for (a student's FUSE mount on
        a home): never asked, it may never answer and gives any owner."""
        return any(is_at_or_below(path, point) for point in daemons)

    def mark(path: str, login: str) -> None:
        if answered(path):
            return
        ident = _identity(path, follow=False)  # a symlink marks nothing beyond it
        if ident is not None:
            marks[ident] = login if marks.get(ident, login) == login else None

    for base, names in ((src, [n for n in _listdir(src) if n not in skip]), (top, _listdir(top))):
        assert base is not None or not names
        for login in names:
            jail = os.path.join(base or "", login)
            home = os.path.join(jail, "home", login)
            uid = None if answered(home) else _owner(home)
            if uid is not None:
                users.setdefault(uid, login)
            for sub in (jail, os.path.join(jail, "home"), os.path.join(jail, "home", login),
                        os.path.join(jail, "tmp")):  # fmt: skip
                mark(sub, login)
    users.pop(0, None)  # root is never a student
    return JailTree(top, users, src, skip, marks)


@dataclass(frozen=True)
class Found:
    """A process in the jail tree: the verdict, and what a person is shown."""

    proc: psutil.Process
    facts: Facts
    decision: Decision
    user: str  # the login of its uid, or the uid as a number
    cmdline: tuple[str, ...]  # shown, never decided on

    @property
    def pid(self) -> int:
        return self.facts.pid

    @property
    def command(self) -> str:
        """The command line as a person reads it: escaped and bounded (gates.text)."""
        return shown(" ".join(self.cmdline), COMMAND_CHARS) or "?"

    def describe(self) -> str:
        """'pid 42 (user alice, jail alice): COMMAND [cwd /...]'."""
        jail = self.decision.jail
        jail_part = f", jail {shown(jail)}" if jail and jail != self.user else ""
        place = f"{self.decision.kind} {self.decision.path}".strip()
        return f"pid {self.pid} (user {shown(self.user)}{jail_part}): {self.command} " \
               f"[{shown(place)}]"


# The process a warm postinst worker runs a command for (warm_worker.py): its
# ancestors (the postinst's shell, dpkg, apt, an administrator's shell) are
# ivle-maint's callers as they would be the postinst's own process's.
_ON_BEHALF_OF: list[int] = []


def on_behalf_of(pid: int) -> None:
    """This process runs the command of PID (a warm postinst): spare its callers too."""
    _ON_BEHALF_OF[:] = [pid]


def protected() -> dict[int, str]:
    """ivle-maint, its ancestors (dpkg, the shell) and init: never signalled.
    Its descendants are not spared: a process in a jail is judged by where
    it is and whose it is, whoever started it."""
    import psutil  # see preload()

    me = psutil.Process()
    chain = [me, *me.parents()]
    for pid in _ON_BEHALF_OF:
        with contextlib.suppress(psutil.Error):
            caller = psutil.Process(pid)
            chain += [caller, *caller.parents()]
    spared = {p.pid: "ivle-maint or its caller" for p in chain}
    spared[1] = "init (PID 1)"
    return spared


def _cmdline(proc: psutil.Process) -> tuple[str, ...]:
    import psutil  # see preload()

    try:
        return tuple(proc.cmdline())
    except psutil.Error:  # a zombie first thread has none
        return ()


def _user(proc: psutil.Process, uid: int) -> str:
    import psutil  # see preload()

    try:
        return str(proc.username())
    except (psutil.Error, KeyError):
        return str(uid)


def scan(tree: JailTree, spared: Mapping[int, str]) -> list[Found]:
    """Every live process in the jail tree, with its verdict."""
    import psutil  # see preload()

    found = []
    for proc in psutil.process_iter():
        try:
            facts = facts_of(proc, tree)
            if facts is None:
                continue  # ended: holds nothing any more
            decision = decide(facts, tree, spared)
            if decision.verdict is not Verdict.OUTSIDE:
                found.append(Found(proc, facts, decision, _user(proc, facts.uid),
                                   _cmdline(proc)))  # fmt: skip
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # ended while we looked: nothing to stop
    return found


# -- signalling -------------------------------------------------------------


def _pidfd_of(proc: psutil.Process) -> int | None:
    """A pidfd of the very process psutil judged, or None once it ended.

    The pidfd names whatever has the pid now; psutil's start time, read
    after the pidfd is open, says whether that is still the process we
    decided on (then the pidfd pins it: its pid cannot be reused).
    MaintError when no pidfd can be had: a pid alone is never signalled.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return None
    except (OSError, AttributeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "no pidfd_open"
        raise MaintError(f"cannot open a pidfd for pid {proc.pid} ({why}); "
                         "a pid alone is never signalled") from None  # fmt: skip
    if not proc.is_running():
        os.close(fd)
        return None
    return fd


class _Handle:
    """One process to signal, always through a pidfd: one held while at most
    MAX_PIDFDS are (for polling its end), else one opened for each signal."""

    open_fds = 0  # pidfds held now: at most MAX_PIDFDS

    def __init__(self, found: Found) -> None:
        self.found = found
        self.fd: int | None = None
        self.dead = False
        if _Handle.open_fds < MAX_PIDFDS:
            self.fd = _pidfd_of(found.proc)
            if self.fd is None:
                self.dead = True
            else:
                _Handle.open_fds += 1

    def send(self, sig: int) -> bool:
        """Signal it; False when it had already gone."""
        if self.dead:
            return False
        fd = self.fd if self.fd is not None else _pidfd_of(self.found.proc)
        if fd is None:
            self.dead = True
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            self.dead = True
            return False
        finally:
            if fd != self.fd:
                os.close(fd)
        return True

    def gone(self) -> bool:
        import psutil  # see preload()

        if self.dead:
            return True
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            self.dead = bool(poller.poll(0))
            if self.dead:
                self.close()  # a fork bomb's thousands must not use up our descriptors
        else:
            try:  # the pid may be another's by now: psutil's start time decides
                self.dead = not self.found.proc.is_running() or live_task(self.found.proc) is None
            except psutil.NoSuchProcess:
                self.dead = True
        return self.dead

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            _Handle.open_fds -= 1


def _wait(handles: Iterable[_Handle], timeout: float) -> list[_Handle]:
    """Wait until they end (a zombie has ended); the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = [h for h in handles if not h.gone()]
    pause = 0.002  # most consoles end within milliseconds of SIGTERM
    while alive and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        alive = [h for h in alive if not h.gone()]
    return alive


@dataclass(frozen=True)
class Ended:
    """One student process stopped, and how."""

    found: Found
    how: str  # "terminated" (SIGTERM was enough), "killed" (SIGKILL) or "vanished"


@dataclass
class Emptied:
    """What empty_jails did."""

    ended: list[Ended] = field(default_factory=list)
    spared: list[tuple[Found, str]] = field(default_factory=list)  # PROTECTED, and why
    ignored_term: list[Found] = field(default_factory=list)  # still there after term_timeout


def _count(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _one_line(items: list[Found], text: Callable[[Found], str]) -> str:
    shown = "; ".join(text(f) for f in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _refuse_foreign(foreign: list[Found]) -> MaintError:
    def text(f: Found) -> str:
        return (f"pid {f.pid} (user {shown(f.user)}): {f.command} "
                f"[{f.decision.kind} {shown(f.decision.path)}]")  # fmt: skip

    return MaintError(
        f"inside a jail, not an IVLE user's: {_one_line(foreign, text)}; nothing was "
        "stopped: leave the jail (cd /, end the shell) and run this again"
    )


def refuse_foreign(tree: JailTree, *, site_up: bool = False) -> None:
    """MaintError naming the processes in a jail that are no IVLE user's
    (after SETTLE seconds for them to go): the check a preflight can make.

    SITE_UP: only a process whose root or working directory is in a jail
    counts (an administrator's shell): the web server, up, opens students'
    files to serve them; the stop step, once it is down, counts them all.
    """
    _settled(tree, protected(), SITTING if site_up else None)


SITTING = frozenset({"root", "cwd"})  # the facts of a process that lives in a jail


def _handle(found: Found, handles: dict[int, _Handle]) -> _Handle:
    known = handles.get(found.pid)
    if known is None or known.found.proc != found.proc:  # new, or a reused pid
        known = handles[found.pid] = _Handle(found)
    return known


def _freeze(first: list[Found], tree: JailTree, spared: Mapping[int, str],
            handles: dict[int, _Handle]) -> list[_Handle]:  # fmt: skip
    """SIGSTOP each, then each child they forked meanwhile, until none is new."""
    import psutil  # see preload()

    frozen: dict[int, _Handle] = {}
    tried: set[int] = set()
    todo = list(first)
    while todo:
        batch = [_handle(f, handles) for f in todo if f.pid not in tried]
        tried.update(f.pid for f in todo)
        todo = []
        for handle in batch:
            if handle.send(signal.SIGSTOP):
                frozen[handle.found.pid] = handle
        for handle in batch:
            try:
                children = handle.found.proc.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                if child.pid in tried:
                    continue
                try:
                    facts = facts_of(child, tree)
                    if facts is None:
                        continue
                    decision = decide(facts, tree, spared)
                    if decision.verdict is Verdict.STUDENT:
                        todo.append(Found(child, facts, decision, _user(child, facts.uid),
                                          _cmdline(child)))  # fmt: skip
                except psutil.Error:
                    continue
    return list(frozen.values())


def empty_jails(
    tree: JailTree,
    *,
    term_timeout: float,
    bound: float = FORCE_BOUND,
    progress: Callable[[int], None] | None = None,
) -> Emptied:
    """Stop every student process in the jails; return when a scan finds none.

    MaintError (one line), before any signal, when a process of a user
    who is not IVLE's is in a jail; MaintError naming what remains when
    bound seconds of SIGKILL rounds after the SIGTERM wait did not empty them.
    """
    spared = protected()
    result = Emptied()
    handles: dict[int, _Handle] = {}
    try:
        found = _settled(tree, spared)
        result.spared = [(f, spared[f.pid]) for f in found
                         if f.decision.verdict is Verdict.PROTECTED]  # fmt: skip
        students = [f for f in found if f.decision.verdict is Verdict.STUDENT]
        # Politely first: SIGTERM, and term_timeout for them to end.
        termed = {f.pid: handles.setdefault(f.pid, _Handle(f)) for f in students}
        vanished = {pid for pid, h in termed.items() if not h.send(signal.SIGTERM)}
        stubborn = _wait(termed.values(), term_timeout)
        result.ignored_term = [h.found for h in stubborn]
        killed: dict[int, Found] = {}
        deadline = time.monotonic() + bound
        left = [f for f in scan(tree, spared) if f.decision.verdict is Verdict.STUDENT] \
            if students else []  # fmt: skip
        while left:
            log.debug("%d student processes left in the jails: SIGSTOP, then SIGKILL", len(left))
            if progress is not None:
                progress(len(left))
            frozen = _freeze(left, tree, spared, handles)
            for handle in frozen:
                if handle.send(signal.SIGKILL):
                    killed.setdefault(handle.found.pid, handle.found)
            _wait(frozen, KILL_WAIT)
            left = [f for f in scan(tree, spared) if f.decision.verdict is Verdict.STUDENT]
            if left and time.monotonic() > deadline:
                raise _remains(left, term_timeout + bound)
        for f in students:
            how = "vanished" if f.pid in vanished else "terminated"
            result.ended.append(Ended(f, "killed" if f.pid in killed else how))
        seen = {f.pid for f in students}
        result.ended += [Ended(f, "killed") for pid, f in killed.items() if pid not in seen]
        return result
    finally:
        for handle in handles.values():
            handle.close()


def _settled(tree: JailTree, spared: Mapping[int, str],
             kinds: frozenset[str] | None = None) -> list[Found]:  # fmt: skip
    """A scan; a process not IVLE's in a jail gets SETTLE seconds to go (IVLE's
    console launcher is root between its chroot and its setuid), then refuses.
    KINDS: only a process put in a jail by one of these facts counts."""

    def foreign(f: Found) -> bool:
        return f.decision.verdict is Verdict.FOREIGN and (
            kinds is None or f.decision.kind.split()[0] in kinds)

    found = scan(tree, spared)
    first = {f.proc for f in found if foreign(f)}
    if first:
        time.sleep(SETTLE)
        found = scan(tree, spared)
        # Only one that stayed (the same process: psutil compares start
        # times): on a site that is up, new launchers come and go meanwhile.
        stayed = [f for f in found if foreign(f) and f.proc in first]
        if stayed:
            raise _refuse_foreign(stayed)
    return found


def _remains(left: list[Found], seconds: float) -> MaintError:
    def text(f: Found) -> str:
        return f"pid {f.pid} (user {shown(f.user)}, jail {shown(f.decision.jail or '?')})"

    return MaintError(
        f"{_count(len(left))} still in the jails after {seconds:g}s of SIGTERM, SIGSTOP "
        f"and SIGKILL: {_one_line(left, text)}; stuck in the kernel (state D)? "
        f"see '{ivle_maint('consoles', 'list')}'"
    )


# -- a process named by number ----------------------------------------------
#
# A pid judged from /proc (its program, its start time) names another
# process once it has ended: a student's may take the number.  So a pidfd
# is opened first, the judged start time read again after, and the pidfd
# kept only if its process has not exited meanwhile; every wait and signal
# then goes through that pidfd, never the number.


def still_running(pidfd: int) -> bool:
    """PIDFD's process has not exited: what was read of its pid since the
    pidfd was opened was read of it (a pid is reused only once it ended)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)


def pinned(pid: int, start: int | str) -> int | None:
    """A pidfd of PID while it is the process that started at START (clock
    ticks after boot, /proc/PID/stat), else None.  The caller closes it."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, OverflowError):
        return None
    fields = _stat(pid)
    if fields is not None and fields[19] == str(start).encode() and still_running(fd):
        return fd
    os.close(fd)
    return None


# -- what a killed run left -------------------------------------------------
#
# A command ivle-maint runs starts a session of its own (its group's number
# is its pid) and carries a mark in its environment (environment.MARK, a
# random value recorded with it, children.record), which whatever it forks
# inherits.  Once that run is killed, its record names the group by number
# only; when the leader has gone, that number may be any session's made
# since (a daemon's double fork, a student's `setsid sh -c 'job &'`).  So a
# member is ended only when the group is provably the command's: its leader
# is the recorded process itself (its start time), or the member carries
# the command's mark, which no student can read (root's environment and
# root's record).  A record without a mark (an earlier version's) proves no
# group whose leader has gone.  Each signal goes through a pidfd opened
# before the proof: a pid reused meanwhile is never signalled.

ENVIRON_BOUND = 1 << 20  # bytes of /proc/PID/environ looked through


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def group_members(pgid: int, since: int) -> list[int]:
    """Live processes in group PGID started no earlier than SINCE (clock ticks)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != b"Z" and int(fields[2]) == pgid and int(fields[19]) >= since:
            members.append(int(entry.name))
    return members


def _carries(pid: int, mark: str) -> bool:
    """Does PID's environment hold MARK (environment.MARK=MARK)?"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read(ENVIRON_BOUND)
    except OSError:
        return False
    return f"{environment.MARK}={mark}".encode() in data.split(b"\0")


def _leader_is(pgid: int, leader_start: object) -> bool | None:
    """True: PGID's leader lives and is the recorded process; False: it lives
    and is another (the whole group is another's); None: it has gone."""
    fields = _stat(pgid)
    if fields is None:
        return None
    return isinstance(leader_start, int) and int(fields[19]) == leader_start


def _leftover(pid: int, pgid: int, since: int, leader_start: object, mark: object) -> bool:
    fields = _stat(pid)
    if fields is None or fields[0] == b"Z" or int(fields[2]) != pgid or int(fields[19]) < since:
        return False
    leader = _leader_is(pgid, leader_start)
    if leader is not None:
        return leader
    return isinstance(mark, str) and bool(mark) and _carries(pid, mark)


def leftover_members(pgid: int, since: int, leader_start: object, mark: object) -> list[int]:
    """The live members of group PGID provably the recorded command's (see above)."""
    return [pid for pid in group_members(pgid, since)
            if _leftover(pid, pgid, since, leader_start, mark)]  # fmt: skip


def _signal_leftovers(pgid: int, since: int, leader_start: object, mark: object,
                      sig: int) -> list[int]:  # fmt: skip
    """SIG to each proved member, through a pidfd opened before the proof;
    the pidfds of those signalled (the caller closes them)."""
    fds = []
    for pid in group_members(pgid, since):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _leftover(pid, pgid, since, leader_start, mark):
                signal.pidfd_send_signal(fd, sig)
                fds.append(fd)
                fd = -1
        except ProcessLookupError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)
    return fds


def end_leftover_group(pgid: int, since: int, leader_start: object, mark: object, *,
                       grace: float, kill_wait: float = 30.0) -> int:  # fmt: skip
    """SIGTERM the proved members of a dead run's command group, SIGKILL those
    left after GRACE seconds, and wait (KILL_WAIT at most) until they have
    ended; how many were signalled."""
    signalled = 0
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        fds = _signal_leftovers(pgid, since, leader_start, mark, sig)
        if not fds:
            return signalled
        signalled = max(signalled, len(fds))
        try:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            alive, deadline = set(fds), time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                for fd, _event in poller.poll(max(deadline - time.monotonic(), 0) * 1000):
                    alive.discard(fd)
                    poller.unregister(fd)
            if not alive:
                return signalled
        finally:
            for fd in fds:
                os.close(fd)
    return signalled
