"""Replace a file so that a crash leaves either the old or the new content.

The new content goes to a temporary file in the same directory (a rename
is only atomic within one filesystem), is flushed to disk, then renamed
over the target, and the directory is flushed so the rename itself
survives a power cut.  An existing file keeps its owner and mode; a copy
of it can be kept in a backup directory first.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from .errors import MaintError
from .safepaths import make_dirs, safe_dir

DEFAULT_MODE = 0o644  # for a new file when no mode is given


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _match_owner_and_mode(fd: int, mode: int, like: os.stat_result | None) -> None:
    # chown first: it clears set-id bits, which the chmod then restores.  A
    # lost group would lock Apache out of a root:www-data 0640 ivle.conf, so
    # failing to keep the owner is an error, not something to skip.
    if like is not None:
        mine = os.fstat(fd)
        if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
            os.fchown(fd, like.st_uid, like.st_gid)
    os.fchmod(fd, mode)


def _write_temp(directory: Path, name: str, data: bytes | BinaryIO, mode: int,
                like: os.stat_result | None) -> Path:
    """A flushed temporary file in DIRECTORY; removed again on any failure."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                shutil.copyfileobj(data, handle)
            handle.flush()
            _match_owner_and_mode(handle.fileno(), mode, like)
            os.fsync(handle.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _install(tmp: Path, target: Path) -> None:
    """Rename TMP over TARGET and flush the directory; TMP never survives."""
    try:
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def backup_copy(path: Path, backup_dir: Path) -> Path:
    """Copy PATH into BACKUP_DIR as NAME.YYYYMMDDTHHMMSSZ[.N], owner and mode kept.

    The directory is made private (0700) when created: ivle.conf holds the
    database password, and a backup must not be easier to read than it.
    """
    safe_dir(backup_dir, 0o700, "[paths] backup")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = backup_dir / f"{path.name}.{stamp}"
    serial = 1
    while dest.exists():
        serial += 1
        dest = backup_dir / f"{path.name}.{stamp}.{serial}"
    like = os.stat(path)
    with open(path, "rb") as source:
        tmp = _write_temp(backup_dir, dest.name, source, stat.S_IMODE(like.st_mode), like)
    _install(tmp, dest)
    return dest


def write_atomic(path: Path, data: bytes, *, mode: int | None = None,
                 backup_dir: Path | None = None, follow_symlinks: bool = True) -> Path | None:
    """Replace PATH with DATA atomically; returns the backup made, if any.

    MODE applies to a new file (default 0644), or overrides an existing
    file's mode; an existing file otherwise keeps its mode, and always its
    owner and group.  A
    symlink is followed: its target is replaced, the link stays; unless
    not follow_symlinks (ivle-maint's own state files): then the link
    itself is replaced by the new file.  Missing parent directories are
    created (0755, whatever the umask).  Any failure raises MaintError and
    leaves the old file as it was, with no temporary file behind.
    """
    target = Path(os.path.realpath(path) if follow_symlinks else os.path.abspath(path))
    try:
        make_dirs(target.parent, 0o755)
        try:
            like: os.stat_result | None = os.stat(target) if follow_symlinks else os.lstat(target)
        except FileNotFoundError:
            like = None
        if like is not None and stat.S_ISLNK(like.st_mode):
            like = None  # not followed: the link is replaced, nothing of it kept
        if mode is None:
            mode = stat.S_IMODE(like.st_mode) if like else DEFAULT_MODE
        backup = backup_copy(target, backup_dir) if backup_dir and like else None
        tmp = _write_temp(target.parent, target.name, data, mode, like)
        _install(tmp, target)
    except OSError as exc:
        where = exc.filename or target
        raise MaintError(f"cannot write {path}: {where}: {exc.strerror or exc}") from None
    return backup


def write_state_file(path: Path, data: bytes, *, mode: int) -> None:
    """write_atomic for ivle-maint's own state: a safe directory, no symlink followed."""
    safe_dir(path.parent, 0o755, "[paths] state")
    write_atomic(path, data, mode=mode, follow_symlinks=False)
