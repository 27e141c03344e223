"""Files rewritten: one atomic replacement that keeps everything the file had.

The rule: every file ivle-maint writes, ivle.conf as much as its own state,
goes through replace_file(), and replace_file()

- refuses a target that is a symlink, not a regular file, has several
  hard links (a replacement would silently split the link: the other
  names would keep the old content), or is immutable or append-only
  (chattr +i, +a: no rename can replace it), with one line saying so;
- writes the new content to a temporary file in the same directory,
  created with O_EXCL|O_NOFOLLOW (nothing planted there is followed or
  reused), and flushes it;
- gives it what the old file had: owner and group (a lost group would
  lock Apache out of a root:www-data 0640 ivle.conf), mode, and every
  extended attribute, the POSIX ACL (system.posix_acl_access) included;
  security.* ones where the kernel permits, every other one or nothing;
- renames it over the target and flushes the directory, so a crash
  leaves the old file or the new one, never a mix or a stray temporary;
- where the old content was read (a backup, an expectation), exchanges
  the two instead (renameat2 RENAME_EXCHANGE) and looks at what came out:
  another program's file renamed into place, or the old one written to,
  after it was read is put back and the rewrite refused, never lost.

check_rewritable() is the refusal alone: the preflight asks it about
ivle.conf while the site is still up, so the after-phase never finds out
too late that it may not rewrite the file.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import MaintError
from ..safepaths import make_dirs, open_nofollow, read_nofollow, safe_dir
from . import clock, trusted
from .text import shown

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o644  # for a new file when no mode is given
BACKUP_MODE = 0o600  # a backup of ivle.conf holds the database password
ACL_XATTR = "system.posix_acl_access"
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_rewritable(path: Path) -> os.stat_result | None:
    """PATH's lstat when replace_file() may replace it, None when it is absent.

    Raises a one-line MaintError for a symlink, anything but a regular file,
    or a file with several hard links.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MaintError(f"{path}: cannot check before rewriting it: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise MaintError(f"{path}: is a symlink; refused (ivle-maint replaces this file and "
                         "never writes through a link: make it a regular file)")
    if not stat.S_ISREG(st.st_mode):
        raise MaintError(f"{path}: not a regular file; refused (remove it)")
    if st.st_nlink > 1:
        raise MaintError(f"{path}: has {st.st_nlink} hard links; refused (replacing it would "
                         "split them: make it a single file, e.g. cp -a it and mv the copy over)")
    flags = _inode_flags(path)
    if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
        which = "immutable" if flags & FS_IMMUTABLE_FL else "append-only"
        raise MaintError(f"{path}: is {which} (chattr +{which[0]}); refused (no rename can "
                         f"replace it: chattr -{which[0]} it first)")
    return st


def _regular(path: Path) -> os.stat_result:
    """PATH's lstat: a regular file, never through a symlink (MaintError)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise MaintError(f"{shown(path)}: not a regular file; refused")
    return st


FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h, as lsattr reads them
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20


def _inode_flags(path: Path) -> int:
    """The file's inode flags (lsattr); 0 where the filesystem has none."""
    import fcntl
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY)  # fmt: skip
    except OSError:
        return 0  # unreadable: the replacement itself will say why
    try:
        return int(struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8))[0])
    except OSError:
        return 0  # ENOTTY: a filesystem without inode flags
    finally:
        os.close(fd)


def read_attrs(fd: int) -> dict[str, bytes]:
    """Every extended attribute of the open file FD, ACLs included."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            return {}
        raise
    attrs = {}
    for name in names:
        with suppress(OSError):  # gone meanwhile, or unreadable: not there to keep
            attrs[name] = os.getxattr(fd, name)
    return attrs


def _set_attrs(fd: int, attrs: dict[str, bytes], where: Path, strict: bool) -> None:
    """The new file's attributes become ATTRS: what it inherited that the
    old file did not have (a directory's default ACL) goes, the rest is
    set.  security.* ones are the kernel's policy: set where permitted,
    never removed."""
    for name in set(read_attrs(fd)) - set(attrs):
        if not name.startswith("security."):
            os.removexattr(fd, name)
    for name, value in attrs.items():
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            if name.startswith("security.") or not strict:
                log.info("%s: extended attribute %s not kept: %s", where, name, exc.strerror)
                continue
            raise MaintError(f"{where}: its extended attribute {name} cannot be kept "
                             f"({exc.strerror}); nothing written") from None


TEMP_TOKEN = 6  # bytes of randomness in a temporary file's name (12 hex digits)


def _is_temporary(name: str) -> bool:
    """NAME is one _open_temp makes: .TARGET.<12 hex digits>.tmp."""
    head, _, token = name.removesuffix(".tmp").rpartition(".")
    return (name.startswith(".") and name.endswith(".tmp") and len(head) > 1
            and len(token) == 2 * TEMP_TOKEN and all(c in "0123456789abcdef" for c in token))


@contextmanager
def _writing_in(directory: Path) -> Iterator[None]:
    """Held while a temporary file of ours may exist in DIRECTORY: a shared
    flock on the directory.  Whoever gets it exclusively knows that no
    rewrite is under way there, so the temporary files it finds are killed
    runs' (as big as a log, or holding ivle.conf's password): removed, or a
    kill at each rotation would leave one more for ever."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another rewrite is under way here: its temporary is live
        except OSError:  # no flock on this filesystem (NFS): no sweep, the rewrite goes on
            yield
            return
        else:
            for entry in os.scandir(fd):
                if _is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                    with suppress(OSError):  # best effort: never in the rewrite's way
                        os.unlink(entry.name, dir_fd=fd)
                        log.info("%s: removed, left by a killed run",
                                 shown(directory / entry.name))
        fcntl.flock(fd, fcntl.LOCK_SH)  # a sweep's exclusive lock lasts a listing
        yield
    finally:
        os.close(fd)


def _open_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new file beside the target, root's 0600, never a planted one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = directory / f".{name}.{secrets.token_hex(TEMP_TOKEN)}.tmp"
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue


def _write_temp(directory: Path, name: str, data: bytes | Iterable[bytes], *, mode: int,
                like: os.stat_result | None, attrs: dict[str, bytes], strict: bool,
                durable: bool = True) -> Path:
    """A flushed temporary file in DIRECTORY holding DATA (bytes, or chunks
    written as they come: bounded memory); removed again on any failure."""
    fd, tmp = _open_temp(directory, name)
    try:
        for chunk in (data,) if isinstance(data, bytes | bytearray) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        # chown first: it clears set-id bits and file capabilities, which
        # the attributes and the chmod then restore.  The ACL sets the
        # group bits from its mask; the chmod sets the mask from MODE.
        if like is not None:
            mine = os.fstat(fd)
            if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
                os.fchown(fd, like.st_uid, like.st_gid)
            _set_attrs(fd, attrs, directory / name, strict)
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _install(tmp: Path, target: Path, durable: bool = True, old: _Old | None = None) -> None:
    """Rename TMP over TARGET and flush the directory; TMP never survives.

    With OLD (what was read of TARGET), TARGET is exchanged with TMP and
    what comes out must be OLD, unchanged: the window between the read and
    the rename, where another writer's file would be lost, is closed.
    """
    theirs_at_tmp = False  # TMP names another writer's file: never unlinked
    try:
        if old is not None and old.data is not None and _exchange(tmp, target):
            if not _is_unchanged(tmp, old):
                theirs_at_tmp = True
                _exchange(tmp, target)  # theirs back in place, ours at TMP again
                theirs_at_tmp = False
                raise MaintError(f"{shown(target)}: changed while being rewritten (another "
                                 "program wrote it); nothing written, run again")
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        if theirs_at_tmp:  # the exchange back failed: say where their file is
            kept = tmp.with_name(tmp.name.removesuffix(".tmp") + ".theirs")
            with suppress(OSError):
                os.rename(tmp, kept)  # a name no sweep of temporaries removes
                tmp = kept
            raise MaintError(f"{shown(target)}: changed while being rewritten, and the other "
                             f"program's file could not be put back: it is {shown(tmp)}; "
                             "move it back by hand") from exc
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


RENAME_EXCHANGE = 2  # <linux/fs.h>
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap FIRST and SECOND atomically; False where the kernel or the
    filesystem cannot (then the caller renames as before)."""
    import ctypes  # only here: the one call Python's os module lacks

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(second))


def _is_unchanged(path: Path, old: _Old) -> bool:
    """PATH is the very file OLD was read from (not one renamed there since),
    holding what was read (not written to since)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (old.st.st_dev, old.st.st_ino):
            return False
        assert old.data is not None
        return os.pread(fd, len(old.data) + 1, 0) == old.data
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Old:
    """The file about to be replaced, as read through one checked descriptor."""

    st: os.stat_result
    attrs: dict[str, bytes]
    data: bytes | None  # its content, when it was asked for (a backup, an expectation)


def _snapshot(path: Path, st: os.stat_result, purpose: trusted.Purpose | None) -> _Old:
    """PATH's attributes (and, with PURPOSE, its content through the trusted
    gate), from the very file that was checked: one descriptor, compared
    with ST, so a file replaced meanwhile is refused, never copied instead."""
    if purpose is not None:
        fd = trusted.open_checked(path, purpose)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise MaintError(f"{shown(path)}: replaced while being rewritten; nothing written, "
                             "run again")
        data = trusted.read_fd(fd, purpose, path) if purpose is not None else None
        return _Old(st, read_attrs(fd), data)
    finally:
        os.close(fd)


def _store_backup(name: str, old: _Old, backup_dir: Path) -> Path:
    """OLD's content into BACKUP_DIR as NAME.YYYYMMDDTHHMMSSZ[.N]."""
    assert old.data is not None
    safe_dir(backup_dir, 0o700, "[paths] backup")
    stamp = clock.utc_stamp()
    dest = backup_dir / f"{name}.{stamp}"
    serial = 1
    while os.path.lexists(dest):
        serial += 1
        dest = backup_dir / f"{name}.{stamp}.{serial}"
    # Private whatever the file allowed: a backup outlives its mode and ACL
    # (a password changed since, a mode tightened since), and its directory
    # may be one others can enter.
    attrs = {name: value for name, value in old.attrs.items() if name != ACL_XATTR}
    with _writing_in(backup_dir):
        tmp = _write_temp(backup_dir, dest.name, old.data, mode=BACKUP_MODE,
                          like=old.st, attrs=attrs, strict=False)
        _install(tmp, dest)
    return dest


def backup_copy(path: Path, backup_dir: Path,
                purpose: trusted.Purpose = trusted.IVLE_CONF) -> Path:
    """Copy PATH into BACKUP_DIR as NAME.YYYYMMDDTHHMMSSZ[.N]; owner and
    attributes kept where that directory's filesystem can hold them, but
    mode 0600 and no ACL: no one but its owner reads a backup.  PATH
    is read through the trusted gate (PURPOSE: its bound and owner).

    The directory is made private (0700) when created, and the backup is
    0600 whatever the directory: ivle.conf holds the database password.
    The stamp is for people: nothing orders or deletes backups by it.
    """
    st = check_rewritable(path)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    return _store_backup(path.name, _snapshot(path, st, purpose), backup_dir)


MAX_PATCHED = 1 << 20  # patch_in_place reads this much at most


class WriteFailed(MaintError):
    """replace_file's one line, with the errno behind it (a full disk is
    something a log rotation may live with; a refused symlink is not)."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


def replace_file(path: Path, data: bytes | Iterable[bytes], *, mode: int | None = None,
                 backup_dir: Path | None = None, like: Path | None = None,
                 expect: bytes | None = None,
                 purpose: trusted.Purpose = trusted.IVLE_CONF,
                 durable: bool = True) -> Path | None:
    """Replace PATH with DATA atomically; returns the backup made, if any.

    DATA is the new content, or an iterable of its chunks, written as they
    come (a compressed copy of a large log: memory stays bounded); an
    OSError the iterable raises fails the replacement like a write's.

    An existing PATH keeps its owner, group, mode and extended attributes;
    MODE, when given, overrides the mode (and a new file's default, 0644).
    LIKE names another file to take them from instead (a compressed copy
    of a log).  Missing parent directories are created (0755).  Any failure
    raises a one-line MaintError and leaves the old file as it was, with no
    temporary file behind.

    With BACKUP_DIR or EXPECT, the old content is read through the trusted
    gate (PURPOSE), from the descriptor whose attributes are kept: the
    backup is exactly what is replaced, and when that is not EXPECT (the
    content the new one was computed from: another writer replaced it
    meanwhile) nothing is written.

    Not DURABLE: nothing is flushed to disk (each flush costs milliseconds,
    inside the outage).  A reader still sees the old content or the new,
    never a mix, however the writer is killed; only a power cut may leave
    the old one, or an empty file: for records that a reboot makes moot.
    """
    target = Path(os.path.abspath(path))
    try:
        make_dirs(target.parent, 0o755)
        st = check_rewritable(target)
        if like is not None:  # only read: one regular file, however many names it has
            source: _Old | None = _snapshot(Path(like), _regular(Path(like)), None)
            old = None  # LIKE lends its attributes only: nothing of it is backed up
        else:
            wants = backup_dir is not None or expect is not None
            old = source = _snapshot(target, st, purpose if wants else None) if st else None
        if expect is not None and (old is None or old.data != expect):
            raise MaintError(f"{shown(path)}: changed while being rewritten (another program "
                             "wrote it); nothing written, run again")
        if mode is None:
            mode = stat.S_IMODE(source.st.st_mode) if source else DEFAULT_MODE
        backup = _store_backup(target.name, old, backup_dir) if backup_dir and st and old \
            else None
        with _writing_in(target.parent):
            tmp = _write_temp(target.parent, target.name, data, mode=mode,
                              like=source.st if source else None,
                              attrs=source.attrs if source else {}, strict=True,
                              durable=durable)
            _install(tmp, target, durable, old)
    except OSError as exc:
        where = exc.filename or target
        raise WriteFailed(f"cannot write {shown(path)}: {shown(where)}: "
                          f"{exc.strerror or exc}", exc.errno) from None
    return backup


def patch_in_place(path: Path, old: bytes, new: bytes) -> bool:
    """Where replace_file cannot (a full disk): OLD, found once in PATH,
    overwritten by NEW of the same length, which needs no new block.  Torn
    by a power cut, the file reads as damaged, which its reader names.
    True if PATH holds NEW now."""
    if len(old) != len(new):
        raise ValueError("patch_in_place keeps the file's length")
    try:  # the in-place gate: never a second name of another file, nor another's
        fd = open_nofollow(path, os.O_RDWR, None)
    except (OSError, MaintError):
        return False
    try:
        data = os.pread(fd, MAX_PATCHED, 0)
        if data.count(old) != 1:
            return data.count(new) == 1
        os.pwrite(fd, new, data.index(old))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_state_file(path: Path, data: bytes, *, mode: int) -> None:
    """replace_file for ivle-maint's own state, in a directory checked safe first."""
    safe_dir(path.parent, 0o755, "[paths] state")
    replace_file(path, data, mode=mode)


# -- the preflight's proofs: a rewrite's harmless twins ---------------------

def existing_parent(directory: Path) -> Path:
    """DIRECTORY, or its nearest ancestor that exists."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def prove_writable(directory: Path, *, size: int = 0) -> None:
    """Really create (with SIZE bytes, flushed) and remove a file where the
    run will write, or the directory it will create there: a read-only
    mount, an immutable directory or a full disk defeats every permission
    check.  Raises OSError."""
    existing = existing_parent(directory)
    if existing != directory:  # the run will create the directory: try that here
        os.rmdir(tempfile.mkdtemp(prefix=".ivle-maint-preflight-", dir=existing))
        return
    fd, name = tempfile.mkstemp(prefix=".ivle-maint-preflight-", dir=directory)
    try:
        block = memoryview(b"\0" * size)
        while block:  # a short write is the disk filling up: the next one says so
            block = block[os.write(fd, block):]
        if size:
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def prove_replaceable(path: Path, what: str) -> None:
    """PATH, when it exists, may be replaced (check_rewritable) and really is,
    by its own bytes.  A new file's directory is proved with the state room."""
    check_rewritable(path)
    try:
        data = read_nofollow(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MaintError(f"{path}: {what} cannot be read ({exc.strerror}): make it "
                         "readable by root, then run it again") from None
    try:
        replace_file(path, data)
    except MaintError as exc:
        raise MaintError(f"{path}: {what} cannot be rewritten ({exc}): fix it, then run "
                         "it again") from None
