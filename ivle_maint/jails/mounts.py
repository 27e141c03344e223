"""Unmounting every user jail under the jail mounts directory.

The kernel's mount table is the truth: ``ivle-mountallusers -u`` only
tries the users still in the database and exits 0 whatever happened, so
mounts of deleted users and busy mounts survive it.  unmount_jails_in
unmounts everything strictly below the (realpath'd) mounts directory,
children before parents, and reads the table again to prove it.

Unmounting uses the umount2 syscall through ctypes rather than umount(8):
it gives the exact errno (EBUSY against EINVAL) instead of a localised
message, does not fork once per mount (three per user), and with
UMOUNT_NOFOLLOW never follows a symlink, whereas umount(8) canonicalises
the path it is given, following symlinks, before it acts.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import jaildir, mountinfo, system
from ..config import Settings
from ..consoles.jail_processes import JailProcess, scan
from ..errors import MaintError
from ..gates.text import ivle_maint
from ..logfile import BoundedOutput
from ..mountinfo import Mount, is_at_or_below, is_below
from ..output import Reporter
from .users import check_table_logins

log = logging.getLogger(__name__)

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
MAX_PASSES = 10  # a mount hidden under another needs one pass per layer
SHOWN_HOLDERS = 3  # in the one-line error

_libc: ctypes.CDLL | None = None


def _umount2(path: str, flags: int) -> int:
    """umount2(2); 0 or the errno."""
    global _libc
    if _libc is None:
        # The process's own symbols hold libc's: find_library("c") would run
        # ldconfig -p, a process inside the outage.
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.umount2(os.fsencode(path), flags) == 0:
        return 0
    return ctypes.get_errno()


@dataclass(frozen=True)
class BusyMount:
    """A jail mount the kernel refused to unmount, and who holds it."""

    mountpoint: str
    holders: tuple[JailProcess, ...]
    detached: bool = False  # lazily detached (MNT_DETACH) after all

    def describe(self) -> str:
        who = "; ".join(h.describe() for h in self.holders) or "no process found"
        return f"{self.mountpoint} (held by {who})"


@dataclass(frozen=True)
class UnmountResult:
    """What unmount_jails_in did."""

    top: str  # the mounts directory, realpath'd
    unmounted: tuple[str, ...] = ()
    busy: tuple[BusyMount, ...] = ()  # still mounted (busy, or see errors)
    detached: tuple[BusyMount, ...] = ()  # busy, lazily detached
    mountallusers_status: int | None = None  # when ivle-mountallusers -u ran
    errors: tuple[str, ...] = field(default=())  # other failures, one line each

    @property
    def summary(self) -> str:
        if not (self.unmounted or self.busy or self.detached):
            return "no jail mounts"
        parts = [f"unmounted {len(self.unmounted)} jail mounts"]
        if self.detached:
            parts.append(f"lazily detached {len(self.detached)} busy ones")
        if self.busy:
            parts.append(f"{len(self.busy)} busy ones left mounted")
        return ", ".join(parts)


class BusyMountsError(MaintError):
    """Jail mounts are still mounted; .result has the details."""

    def __init__(self, message: str, result: UnmountResult) -> None:
        super().__init__(message)
        self.result = result


def jail_mounts_dir(path: str | os.PathLike[str]) -> str:
    """The configured directory with symlinks resolved once, as /proc shows paths.

    Empty, relative, / and system directories are refused here too, whoever
    calls (jaildir.check, which needs ivle.conf, runs in the preflight).
    """
    return jaildir.resolve(path)


def list_jail_mounts(path: str | os.PathLike[str]) -> list[Mount]:
    """Mounts strictly below the jail mounts directory, in unmount order."""
    return mountinfo.mounts_below(jail_mounts_dir(path))


class _NotFollowed(Exception):
    """A component on the way to a mount point is not a plain directory now."""


def _open_parent(point: str) -> int:
    """An O_PATH descriptor of the mount point's directory, reached from /
    one component at a time, never through a symlink or '..'.

    mountinfo shows real paths, so a symlink on the way means the tree
    changed since we read it (a student renamed a directory in a jail);
    following it could reach a mount outside the jails.  OSError when a
    component is gone; _NotFollowed naming it when it is not a directory.
    """
    parts = point.split("/")[1:-1]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    current = ""
    try:
        for part in parts:
            current = f"{current}/{part}"
            if part in ("", ".", ".."):
                raise _NotFollowed(current)
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise _NotFollowed(current) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _umount_at(point: str, flags: int) -> int:
    """umount2 of what is mounted at point, reached through no symlink: 0 or
    the errno (_NotFollowed when a component is a symlink now).

    The walk and the syscall must see one tree: the syscall goes through
    the walk's descriptor (/proc/self/fd/N/LEAF), so a directory swapped
    for a symlink after the walk changes nothing, and the leaf, a symlink,
    is never followed (UMOUNT_NOFOLLOW).
    """
    leaf = point.rsplit("/", 1)[-1]
    if leaf in ("", ".", ".."):
        raise _NotFollowed(point)
    try:
        fd = _open_parent(point)
    except OSError as exc:
        return exc.errno or errno.ENOENT
    try:
        return _umount2(f"/proc/self/fd/{fd}/{leaf}", flags | UMOUNT_NOFOLLOW)
    finally:
        os.close(fd)


def _unmount_pass(
    top: str, lazy: bool, done: list[str], errors: dict[str, str],
    table: list[Mount] | None = None,
) -> bool:
    """One pass over the table (read now unless given); True if something went."""
    progress = False
    first = len(done)
    for mount in mountinfo.mounts_below(top) if table is None else table:
        point = mount.mountpoint
        if not is_below(point, top):  # mounts_below promises it; never trust twice
            continue
        try:
            err = _umount_at(point, MNT_DETACH if lazy else 0)
        except _NotFollowed as exc:
            errors[point] = f"{exc} is not a directory now (a symlink?); not following it"
            continue
        if err == 0:
            done.append(point)
            errors.pop(point, None)
            progress = True
        elif err in (errno.EBUSY, errno.EINVAL):
            # EBUSY: in use, or a child is still mounted; EINVAL: hidden
            # under a later mount.  Both may clear in the next pass.
            log.debug("umount %s: %s", point, os.strerror(err))
        else:
            errors[point] = f"umount {point}: {os.strerror(err)}"
    # One log record per pass: a site has thousands of jail mounts.
    if len(done) > first:
        log.info("unmounted%s: %s", " lazily" if lazy else "", " ".join(done[first:]))
    return progress


def _busy(top: str, left: list[Mount]) -> list[tuple[str, tuple[JailProcess, ...]]]:
    """Each mount still there, with the processes using it or anything below."""
    users = [jp for _, jp in scan(top, consoles=False)]
    busy = []
    for mount in left:
        point = mount.mountpoint
        held = tuple(jp for jp in users if any(is_at_or_below(p, point) for _, p in jp.places))
        busy.append((point, held))
    return busy


def run_mountallusers(
    argv: Sequence[str], reporter: Reporter, env: Mapping[str, str] | None = None
) -> int:
    """IVLE's own 'ivle-mountallusers -u'; its status, which proves nothing."""
    with BoundedOutput(lambda line: log.info("%s", line)) as logged:
        done = system.run([*argv, "-u"], env=env, on_line=logged)
    if not done.ok:
        last = done.tail[-1] if done.tail else "no output"
        reporter.warn(f"{argv[0]} -u exited {done.exit_code}: {last}")
    return done.exit_code


def unmount_jails_in(
    mounts: str | os.PathLike[str],
    reporter: Reporter,
    *,
    lazy: bool = False,
    mountallusers: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> UnmountResult:
    """Unmount every mount below the jail mounts directory.

    Busy mounts are reported with their holders, lazily detached when
    lazy, else left; then (check) BusyMountsError names them in one line.
    mountallusers: argv of ivle-mountallusers, to run with -u first.
    """
    top = jail_mounts_dir(mounts)
    status = None
    if mountallusers:
        status = run_mountallusers(mountallusers, reporter, env)
    done: list[str] = []
    errors: dict[str, str] = {}
    table: list[Mount] | None = mountinfo.mounts_below(top)
    total = len(table or ())
    for _ in range(MAX_PASSES):
        if not _unmount_pass(top, False, done, errors, table):
            break
        table = None  # later passes read what the kernel has left
        reporter.progress("unmounting jails", len(done), total)
    left = mountinfo.mounts_below(top)
    busy: list[BusyMount] = []
    detached: list[BusyMount] = []
    if left:
        holders = _busy(top, left)
        if lazy:
            lazily: list[str] = []
            _unmount_pass(top, True, lazily, errors)
            gone = set(lazily)
            detached = [BusyMount(p, h, True) for p, h in holders if p in gone]
            holders = [(p, h) for p, h in holders if p not in gone]
            for item in detached:
                reporter.warn(f"lazily detached busy mount {item.describe()}")
        # Whatever the passes said, the table decides what is left.
        still = {m.mountpoint for m in mountinfo.mounts_below(top)}
        busy = [BusyMount(p, h) for p, h in holders if p in still]
        for item in busy:
            reporter.warn(f"busy, left mounted: {item.describe()}")
    result = UnmountResult(
        top=top, unmounted=tuple(done), busy=tuple(busy), detached=tuple(detached),
        mountallusers_status=status,
        errors=tuple(e for p, e in errors.items() if p in {b.mountpoint for b in busy}),
    )  # fmt: skip
    if check and busy:
        raise BusyMountsError(_busy_message(result), result)
    return result


def _busy_message(result: UnmountResult) -> str:
    """One line: how many, the first few holders, what to do."""
    holders = {h.pid: h for b in result.busy for h in b.holders}
    if result.errors:
        why = result.errors[0]
    elif holders:
        shown = [h.describe() for h in list(holders.values())[:SHOWN_HOLDERS]]
        more = f" and {len(holders) - SHOWN_HOLDERS} more" if len(holders) > SHOWN_HOLDERS else ""
        why = "held by " + "; ".join(shown) + more
    else:
        why = "Device busy, no process found holding it"
    first = result.busy[0].mountpoint
    return (
        f"{len(result.busy)} jail mounts still mounted (first: {first}): {why}; stop them "
        f"('{ivle_maint('consoles', 'stop')}') or detach lazily ('--lazy', [jails] "
        "lazy_unmount)"
    )


def unmount_jails_for(
    settings: Settings, reporter: Reporter, *, lazy: bool | None = None
) -> UnmountResult:
    """unmount_jails_in as [jails] and [commands] configure it; lazy overrides."""
    jails = settings["jails"]
    command = None
    if jails["run_mountallusers"]:
        argv = [settings["commands"]["mountallusers"], "-u"]
        if check_table_logins(settings, reporter, shlex.join(argv)):
            command = argv[:1]
    ivle = settings.ivle_conf()
    return unmount_jails_in(
        jaildir.check(ivle),
        reporter,
        lazy=jails["lazy_unmount"] if lazy is None else lazy,
        mountallusers=command,
        # IVLE's tool must read the same ivle.conf as we do.
        env={"IVLECONF": str(settings.ivle_conf_dir)},
    )
