"""ivle-maint's own directories and the files it writes there.

ivle-maint runs as root and writes its lock, journal, logs and database
dumps under [paths] run, state, log and backup.  If another user could
write one of those directories (or one above it), a symlink planted there
would make root truncate or overwrite a file of that user's choosing.  So:

- a directory is checked by the gate (gates/trusted.py: root's, not
  writable by others, and every directory above it) before it is used;
- directories are created with explicit modes, whatever the umask;
- files are opened for writing with O_NOFOLLOW: a symlink where a state
  file should be is an error, never followed.

Reading a file, whichever, is the gate's: trusted.read(path, purpose).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MaintError
from .gates import trusted

if TYPE_CHECKING:
    from .config import Settings

PARENT_MODE = 0o755  # for directories created above the one asked for


def check_dir(path: Path, what: str) -> bool:
    """Refuse an unsafe PATH (ConfigError); False when it does not exist yet."""
    return trusted.check_directory(path, trusted.Purpose(what, None))


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


def open_nofollow(path: Path, flags: int, mode: int | None = 0o600) -> int:
    """os.open for one of ivle-maint's own files it writes in place (a lock,
    a log): never through a symlink, never anything but a regular file (so
    it cannot block), never a file with another name (a hard link: a lock's
    truncation would empty /etc/shadow) or another owner; and given MODE
    exactly, whatever the umask or the mode it had: a lock that others
    can open, they can flock, and so refuse every run.  MODE None: an
    existing file patched, its mode kept."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     0o600 if mode is None else mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MaintError(f"{path}: is a symlink; refused (remove it)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MaintError(f"{path}: not a regular file; refused (remove it)")
        if st.st_nlink != 1:
            raise MaintError(f"{path}: has {st.st_nlink} hard links; refused (remove it)")
        if st.st_uid != os.geteuid():
            raise MaintError(f"{path}: owned by uid {st.st_uid}, not {os.geteuid()}; "
                             "refused (remove it)")
        if mode is not None and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_nofollow(path: Path) -> bytes:
    """The bytes of one of ivle-maint's own state files (the gate's STATE)."""
    return trusted.read(path, trusted.STATE)


SETTINGS_DIRS = ("state", "run", "log", "backup")


def check_settings_dirs(settings: Settings, keys: Iterable[str] = SETTINGS_DIRS) -> None:
    """Refuse unsafe [paths] directories KEYS (default: state, run, log and
    backup) before anything starts, and settings or an ivle.conf that others
    could change: they name the commands, init scripts and migrations root
    runs, and the jail mounts whose processes it signals."""
    trusted.check(settings.path, trusted.SETTINGS)
    trusted.check(settings.ivle_conf_dir / "ivle.conf", trusted.IVLE_CONF)
    for key in keys:
        check_dir(settings.path_of(key), f"[paths] {key}")
