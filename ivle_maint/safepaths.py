"""ivle-maint's own directories and files, safe from other users.

ivle-maint runs as root and writes its lock, journal, logs and database
dumps under [paths] run, state, log and backup.  If another user could
write one of those directories (or one above it), a symlink planted there
would make root truncate or overwrite a file of that user's choosing.  So:

- a directory is refused when it, or a directory above it, is owned by
  anyone but root (or the user running ivle-maint), or when others can
  write it (a directory above may be world-writable only with the sticky
  bit, as /tmp is);
- directories are created with explicit modes, whatever the umask;
- files are opened with O_NOFOLLOW: a symlink where a state file should be
  is an error, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, MaintError

if TYPE_CHECKING:
    from .config import Settings

PARENT_MODE = 0o755  # for directories created above the one asked for


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _refuse(what: str, path: Path, why: str, kind: str = "directory") -> ConfigError:
    return ConfigError(f"{what} {path}: {why}; refused (fix the owner and mode, "
                       f"e.g. chown root: and chmod go-w, or choose another {kind})")


def _check_ancestors(path: Path, what: str) -> None:
    """Every directory above PATH, symlinks on the way included."""
    current = Path("/")
    for part in path.parts[1:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return  # created by us, below a directory already checked
        if stat.S_ISLNK(st.st_mode):
            if not _trusted(st.st_uid):
                raise _refuse(what, path, f"symlink {current} on the way is owned by "
                                          f"uid {st.st_uid}")
            current = Path(os.path.realpath(current))
            st = os.stat(current)
        if not _trusted(st.st_uid):
            raise _refuse(what, path, f"{current} above it is owned by uid {st.st_uid}")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _refuse(what, path, f"{current} above it is writable by others "
                                      f"(mode {stat.S_IMODE(st.st_mode):04o})")


def check_dir(path: Path, what: str) -> bool:
    """Refuse an unsafe PATH (ConfigError); False when it does not exist yet."""
    path = Path(os.path.abspath(path))
    _check_ancestors(path, what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(what, path, "not a directory")
    if not _trusted(st.st_uid):
        raise _refuse(what, path, f"owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022:
        raise _refuse(what, path, f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
    return True


def make_dirs(path: Path, mode: int, parent_mode: int = PARENT_MODE) -> None:
    """mkdir -p with explicit modes: the umask cannot widen (or narrow) them."""
    path = Path(os.path.abspath(path))
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another run: checked by the caller
        os.chmod(directory, mode if directory == path else parent_mode)


def safe_dir(path: Path, mode: int, what: str) -> Path:
    """PATH checked (see check_dir), created with MODE if missing."""
    try:
        if not check_dir(path, what):
            make_dirs(path, mode)
            check_dir(path, what)
    except OSError as exc:
        raise MaintError(f"{what} {path}: {exc.strerror or exc}") from None
    return path


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symlink and anything but a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MaintError(f"{path}: is a symlink; refused (remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MaintError(f"{path}: not a regular file; refused (remove it)")
    os.set_blocking(fd, True)
    return fd


def read_nofollow(path: Path) -> bytes:
    """The bytes of a regular file that is not a symlink."""
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def check_file(path: Path, what: str) -> None:
    """Refuse a file that decides what root runs (settings, ivle.conf) when
    another user could change it, or a directory above it (ConfigError)."""
    path = Path(os.path.abspath(path))
    _check_ancestors(path, what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not _trusted(st.st_uid):
        raise _refuse(what, path, f"owned by uid {st.st_uid}, not root", "file")
    if st.st_mode & 0o022:
        raise _refuse(what, path, f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                      "file")


SETTINGS_DIRS = ("state", "run", "log", "backup")


def check_settings_dirs(settings: Settings, keys: Iterable[str] = SETTINGS_DIRS) -> None:
    """Refuse unsafe [paths] directories KEYS (default: state, run, log and
    backup) before anything starts, and settings or an ivle.conf that others
    could change: they name the commands, init scripts and migrations root
    runs, and the jail mounts whose processes it signals."""
    check_file(settings.path, "settings file")
    check_file(settings.ivle_conf_dir / "ivle.conf", "ivle.conf")
    for key in keys:
        check_dir(settings.path_of(key), f"[paths] {key}")
