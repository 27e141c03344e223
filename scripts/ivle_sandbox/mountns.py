"""Mount namespace guard and mount helpers.

Every bind mount the sandbox makes must stay invisible to the host.  The
guard proves that the calling process is in a mount namespace other than
the host's and that the mounts around the sandbox do not propagate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
from pathlib import Path

from ivle_maint import mountinfo as parsed

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
# Set by enter_private_namespace(): "<old ns inode>:<new ns inode>".  It is
# the proof of privacy when /proc/1 is ourselves (PID 1 of a PID namespace).
NS_ENV = "IVLE_SANDBOX_MNTNS"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class SandboxError(RuntimeError):
    """The sandbox cannot do what was asked without risking the host."""


# One parser of /proc/PID/mountinfo: ivle-maint's own.
Mount = parsed.Mount


def mountinfo(pid: int | str = "self") -> list[Mount]:
    """The mounts seen by a process, in mount order."""
    return parsed.read(pid)


def shared(mount: Mount) -> bool:
    """Does MOUNT propagate to a peer group (and so, maybe, to the host)?"""
    return any(field.startswith("shared:") for field in mount.optional)


def _inside(path: str, root: Path) -> bool:
    top = str(root).rstrip("/")
    return path == top or path.startswith(top + "/")


def mounts_under(root: Path, pid: int | str = "self") -> list[Mount]:
    """Mounts at or below root as a process sees them."""
    return [m for m in mountinfo(pid) if _inside(m.mountpoint, Path(root))]


def is_mountpoint(path: Path) -> bool:
    return any(m.mountpoint == str(path) for m in mountinfo())


def _ns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def namespace_problem(path: Path | None = None) -> str | None:
    """Why mounting under path could leak to the host; None when it cannot."""
    mine = _ns_inode("self")
    recorded = os.environ.get(NS_ENV, "")
    old, _, new = recorded.partition(":")
    proven = new == str(mine) and old != new
    if not proven:
        try:
            if _ns_inode(1) == mine:
                return "this process shares PID 1's mount namespace (use unshare -m)"
        except PermissionError:
            # /proc/1/ns is hidden from us: mount IDs are global, so a shared
            # namespace would show the same IDs in both tables.
            try:
                theirs = {m.mount_id for m in mountinfo(1)}
            except OSError:
                return "cannot tell PID 1's mount namespace from ours"
            if theirs & {m.mount_id for m in mountinfo()}:
                return "this process shares PID 1's mount namespace (use unshare -m)"
    if path is not None:
        target = str(Path(path).resolve())
        for mount in mountinfo():
            encloses = _inside(target, Path(mount.mountpoint))
            if (encloses or _inside(mount.mountpoint, Path(target))) and shared(mount):
                return f"mount {mount.mountpoint} is shared (use mount --make-rprivate /)"
    return None


def require_private(path: Path | None = None) -> None:
    """Raise SandboxError unless mounts under path stay in this process."""
    problem = namespace_problem(path)
    if problem:
        raise SandboxError(f"refusing to mount: {problem}")


def enter_private_namespace() -> None:
    """Move this process into its own mount namespace with private propagation.

    unshare(CLONE_NEWNS) fails in a multi-threaded process, so call this
    early (pytest_configure, the start of a CLI).
    """
    if namespace_problem() is not None:
        old = _ns_inode("self")
        if _libc.unshare(CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise SandboxError(f"unshare(CLONE_NEWNS): {os.strerror(err)}")
        os.environ[NS_ENV] = f"{old}:{_ns_inode('self')}"
    # The copied mounts keep their peer groups until made private.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


def _mount(source: str | None, target: Path, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def bind(source: Path, target: Path, *, readonly: bool = False) -> None:
    """mount --bind source target, then remount,bind,ro when asked."""
    _mount(str(source), target, MS_BIND)
    if readonly:
        _mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY)


def mount_user_jail(template: Path, src: Path, mounts: Path, login: str, *,
                    checked: bool = False) -> None:
    """The layout ivle-mountallusers makes: template ro, then home and tmp.

    checked=True: the caller ran require_private() on a parent already.
    """
    jail = mounts / login
    jail.mkdir(parents=True, exist_ok=True)
    if not checked:
        require_private(jail)
    bind(template, jail, readonly=True)
    bind(src / login / "home", jail / "home")
    bind(src / login / "tmp", jail / "tmp")


def umount(path: Path, *, lazy: bool = False) -> None:
    if _libc.umount2(str(path).encode(), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def unmount_under(root: Path, *, lazy_fallback: bool = True) -> list[str]:
    """Unmount everything below root, deepest first; what stays mounted."""
    for _ in range(10):  # stacked mounts need one pass each
        mounts = mounts_under(root)
        if not mounts:
            return []
        mounts.sort(key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)
        for mount in mounts:
            try:
                umount(Path(mount.mountpoint))
            except OSError as exc:
                if exc.errno == errno.EBUSY and lazy_fallback:
                    umount(Path(mount.mountpoint), lazy=True)
                elif exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
    return [m.mountpoint for m in mounts_under(root)]


def remove_tree(root: Path) -> None:
    """rm -rf root, but never through a mount (it would delete what it shows)."""
    left = mounts_under(root)
    if left:
        raise SandboxError(f"{root}: still mounted: {left[0].mountpoint}")
    shutil.rmtree(root, ignore_errors=False)
