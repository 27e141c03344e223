"""Whether a file may be read, or a program run, by root: the one decision.

ivle-maint runs as root, inside dpkg, on machines where students run their
own code.  Everything it reads decides what root does (settings name the
programs it runs, migrations run as the database owner, state files say
what to resume), and every program it runs runs as root.  So, for every
file ivle-maint reads and every program it runs, however it was found
(an absolute path, a PATH lookup, an init script, a source tree's
setup.py), this module alone decides:

- the path is walked component by component: every directory on the way
  is owned by root and not writable by group or others; a world-writable
  directory with the sticky bit (/tmp) may be on the way, since the entry
  below it must be root's and the sticky bit keeps others from renaming
  it, but never holds a program root runs, nor a directory whose listing
  decides what runs (the migrations);
- a symlink on the way (or in place of the file) is followed only when it
  is root's; the state files ivle-maint writes itself are never symlinks;
- nothing on the way, nor the file, nor an entry of a source tree, is on
  a FUSE filesystem (the kernel's mount table, by st_dev): its daemon
  says who owns each file (root, 0755, to a user's fusermount with
  allow_other) and serves what it likes;
- the file is a regular file: a FIFO, device, socket or directory is
  refused from lstat, before anything opens it, and it is opened with
  O_NONBLOCK | O_NOFOLLOW, then fstat-ed, so nothing opened can block;
  a file on proc, sysfs, FUSE and the like (fstatfs) is refused too (a
  read of /proc/kmsg, a root-owned regular file, blocks for ever; a FUSE
  daemon reports any owner), and the descriptor stays non-blocking while
  it is read: a read that would block is refused, never waited for;
- it is owned by root and not writable by group or others;
- it is no larger than its purpose allows (below), checked on the open
  file and again while reading, so a sparse 2 GB file is never read;
- the bytes come from the descriptor that was checked: no second open by
  name, no gap between the check and the use.  A program is run by the
  path that was checked, every directory of which only root can change;
  a script's interpreter (#!) is checked the same way, and when that is
  env, so is the program env runs, looked up as env does on the PATH
  the script inherits (or the one its first line sets); what ivle-maint
  cannot follow as env would (quoting, variables, other options, a
  relative directory on that PATH) is refused.

When ivle-maint does not run as root, its own uid counts as root's: it
gains no privilege, and reads the files of the user running it.

Purposes, their owner and their bound (a refusal's exit status in brackets;
README "Exit statuses"):

    settings file        root, 1 MiB       [2]  ivle-maint.conf
    ivle.conf            root, 1 MiB       [2]
    [web] maintenance_page  root, 64 KiB   [2]  (Apache takes 7 KiB of it)
    Apache configuration root, 1 MiB       [1]  IVLE's sites, apache2.conf,
                                                 conf- and mods-enabled: only
                                                 read for a warning
    migration            root, 16 MiB      [1]  IVLE's migrations, and their
                                                 directory (no sticky bit)
    migrations manifest  root, 64 MiB      [1]  --new-migrations FILE (stdin:
                                                 the same bound)
    state file           root, 16 MiB      [1]  journal, pins, media record,
                                                 lock, node id, children;
                                                 never a symlink
    log                  root, 64 GiB      [1]  an old run's log, compressed
                                                 as it is read (in pieces)
    dump                 root, not read    [1]  a partial dump, opened to ask
                                                 its flock
    program / init script  root, not read  [2]  run as root; its directory
                                                 not writable even with the
                                                 sticky bit
    machine id           root, 4 KiB       [1]  /etc/machine-id
    source tree          root, every entry [2]  upgrade --source: setup.py
                                                 runs as root
    HAProxy's stats socket  root, not read [1]  [pool] haproxy_socket: what
                                                 it answers decides when a
                                                 slave stops serving

Not through the gate: /proc (the kernel's facts, see gates/processes),
and the attributes (never the content) of a file gates/rewrite replaces,
read from a descriptor opened without following a symlink and compared
with the file it checked.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError, MaintError

KiB, MiB = 1024, 1024 * 1024
MAX_SYMLINKS = 40  # as the kernel's ELOOP
MAX_TREE_ENTRIES = 200_000  # a source tree bigger than this is no IVLE tree
SHEBANG_BYTES = 256
P = TypeVar("P", bound="str | os.PathLike[str]")
MAX_INTERPRETERS = 4


@dataclass(frozen=True)
class Purpose:
    """What a file is for: how it is named in messages, and its bound."""

    what: str  # names the file in a refusal; "" for ivle-maint's own state
    limit: int | None  # most bytes read; None: a program, never read
    error: type[MaintError] = ConfigError
    final_symlink: bool = True  # a (root's) symlink in its place is followed


SETTINGS = Purpose("settings file", 1 * MiB)
IVLE_CONF = Purpose("ivle.conf", 1 * MiB)
MAINTENANCE_PAGE = Purpose("[web] maintenance_page", 64 * KiB)
APACHE_CONF = Purpose("Apache configuration file", 1 * MiB, MaintError)
MIGRATION = Purpose("migration", 16 * MiB, MaintError)
MIGRATIONS_DIR = Purpose("migrations directory", None, MaintError)
MANIFEST = Purpose("migrations manifest", 64 * MiB, MaintError)
STATE = Purpose("", 16 * MiB, MaintError, final_symlink=False)
LOG = Purpose("", 64 * 1024 * MiB, MaintError, final_symlink=False)
DUMP = Purpose("", None, MaintError, final_symlink=False)
MACHINE_ID = Purpose("machine id", 4 * KiB, MaintError)
PROGRAM = Purpose("program", None)
INIT_SCRIPT = Purpose("init script", None)
SOURCE_TREE = Purpose("source tree", None)
HAPROXY_SOCKET = Purpose("HAProxy's stats socket", None, MaintError)


class Refused(MaintError):
    """A file or program the gate refuses (a failed step: exit status 1)."""


class RefusedInput(Refused, ConfigError):
    """Refused, where the file is named by settings (bad input: exit status 2)."""


def _refused(purpose: Purpose, path: str, why: str, advice: str) -> Refused:
    cls = RefusedInput if issubclass(purpose.error, ConfigError) else Refused
    where = f"{purpose.what} {path}" if purpose.what else path
    return cls(f"{where}: {why}; refused ({advice})")


def _fix(kind: str = "file") -> str:
    return f"fix the owner and mode, e.g. chown root: and chmod go-w, or choose another {kind}"


def trusted_uid(uid: int) -> bool:
    """Root, or the user running ivle-maint (who gains nothing)."""
    return uid in (0, os.geteuid())


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _kind(st: os.stat_result) -> str:
    fmt = stat.S_IFMT(st.st_mode)
    return {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
            stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink"}.get(fmt, "not a regular file")


class _Devices:
    """Which st_dev is a FUSE filesystem's: the kernel's mount table, read
    at most once per check, and only once a device other than /'s is met
    (a device number is reused once unmounted: never kept longer)."""

    def __init__(self) -> None:
        self.plain = os.lstat("/").st_dev
        self.daemons: dict[int, str] | None = None

    def kind(self, st: os.stat_result) -> str | None:
        if st.st_dev == self.plain:
            return None
        if self.daemons is None:
            self.daemons = _daemon_devices()
        return self.daemons.get(st.st_dev)

    def check(self, purpose: Purpose, given: str, where: str, st: os.stat_result) -> None:
        kind = self.kind(st)
        if kind is not None:
            raise _refused(purpose, given, f"{where} is on a {kind} filesystem, whose daemon "
                           "says who owns each file", "choose a path on a real filesystem")


def _daemon_devices() -> dict[int, str]:
    """st_dev -> type of each mounted FUSE filesystem (/proc/self/mountinfo)."""
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            data = table.read()
    except OSError:
        return {}
    found: dict[int, str] = {}
    if b" - fuse" not in data:
        return found
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if b"-" not in fields[6:]:
            continue
        kind = fields[fields.index(b"-", 6) + 1].decode("ascii", "replace")
        if kind in ("fuse", "fuseblk") or kind.startswith(("fuse.", "fuseblk.")):
            major, _, minor = fields[2].partition(b":")
            found[os.makedev(int(major), int(minor))] = kind
    return found


def _walk(path: str | os.PathLike[str], purpose: Purpose,
          devices: _Devices | None = None) -> tuple[str, str, os.stat_result]:
    """(the path as given, made absolute; its real path; lstat of that).

    Every directory on the way is checked; symlinks on the way are followed
    when they are root's; nothing on the way (nor the last) is on FUSE.
    FileNotFoundError when something is missing.
    """
    given = os.path.abspath(os.fspath(path))
    pending = [p for p in reversed(given.split("/")) if p]
    current = "/"
    st = os.lstat("/")
    devices = devices if devices is not None else _Devices()
    links = 0
    while pending:
        _check_on_way(purpose, given, current, st)
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        candidate = os.path.join(current, part)
        st = os.lstat(candidate)
        devices.check(purpose, given, candidate, st)
        if stat.S_ISLNK(st.st_mode):
            if not trusted_uid(st.st_uid):
                raise _refused(purpose, given, f"symlink {candidate} on the way is owned by "
                                               f"uid {st.st_uid}", _fix())
            if not pending and not purpose.final_symlink:
                raise _refused(purpose, given, "is a symlink", "remove it")
            links += 1
            if links > MAX_SYMLINKS:
                raise _refused(purpose, given, "too many levels of symlinks", "fix the path")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current, st = "/", os.lstat("/")
            else:
                st = os.lstat(current)
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise FileNotFoundError(f"{candidate} is not a directory")
        if pending:
            current = candidate
        else:
            return given, candidate, st
    return given, current, st


def _check_on_way(purpose: Purpose, given: str, current: str, st: os.stat_result) -> None:
    """A directory the path goes through: root's, not writable by others
    (sticky allowed, unless it holds a program)."""
    if not trusted_uid(st.st_uid):
        raise _refused(purpose, given, f"{current} above it is owned by uid {st.st_uid}", _fix())
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _refused(purpose, given, f"{current} above it is writable by others "
                                       f"(mode {_mode(st)})", _fix())


def _check_holder(purpose: Purpose, given: str, real: str) -> None:
    """A program's own directory, or a listing's, is not writable even sticky."""
    holder = os.path.dirname(real)
    st = os.stat(holder)
    if st.st_mode & 0o022:
        raise _refused(purpose, given, f"{holder}, which holds it, is writable by others "
                                       f"(mode {_mode(st)})", _fix("directory"))


def _check_node(purpose: Purpose, given: str, st: os.stat_result, kind: str = "file") -> None:
    """The file (or directory) itself: its owner and mode."""
    if not trusted_uid(st.st_uid):
        raise _refused(purpose, given, f"owned by uid {st.st_uid}, not root", _fix(kind))
    if st.st_mode & 0o022:
        raise _refused(purpose, given, f"writable by others (mode {_mode(st)})", _fix(kind))


def _check_regular(purpose: Purpose, given: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refused(purpose, given, f"{_kind(st)}, not a regular file",
                       "remove it, or choose another file")


def _check_size(purpose: Purpose, given: str, size: int) -> None:
    if purpose.limit is not None and size > purpose.limit:
        raise _refused(purpose, given,
                       f"larger than {purpose.limit} bytes, the most ivle-maint reads there",
                       "remove it, or choose another file")


# Filesystems whose files are the kernel's, or a daemon's, not files: a
# read can block for ever (/proc/kmsg is a regular file, root's 0400) and
# a FUSE daemon reports whatever owner and mode it likes.
_NOT_FILES = {0x9FA0: "proc", 0x62656572: "sysfs", 0x64626720: "debugfs",
              0x73636673: "securityfs", 0x74726163: "tracefs", 0x27E0EB: "cgroup",
              0x63677270: "cgroup2", 0xCAFE4A11: "bpf", 0x65735546: "fuse",
              0x42494E4D: "binfmt_misc", 0x6E736673: "nsfs", 0x50495045: "pipefs"}


@functools.cache
def _fstatfs() -> Callable[[int, Any], int] | None:
    """libc's fstatfs, looked up once per process (`db status` checks every
    migration file), or None without one."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError):
        return None


def _fs_type(fd: int) -> int | None:
    """The f_type of the filesystem holding FD (fstatfs), None if unknown."""
    import ctypes

    fstatfs = _fstatfs()
    if fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type comes first
    if fstatfs(fd, buf) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def _check_filesystem(purpose: Purpose, given: str, fd: int) -> None:
    kind = _NOT_FILES.get(_fs_type(fd) or 0)
    if kind is not None:
        raise _refused(purpose, given, f"on a {kind} filesystem, whose files can block a "
                       "read or report any owner", "choose a file on a real filesystem")


def open_checked(path: str | os.PathLike[str], purpose: Purpose) -> int:
    """A read-only descriptor of PATH, checked (see the module docstring).

    FileNotFoundError when PATH (or a directory on the way) does not exist;
    a Refused error (exit status of the purpose) when the gate refuses it.
    """
    given, real, st = _walk(path, purpose)
    _check_regular(purpose, given, st)  # from lstat: a device is never opened
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fst = os.fstat(fd)
        _check_regular(purpose, given, fst)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise _refused(purpose, given, "replaced while it was checked", "run again")
        _check_node(purpose, given, fst)
        _check_filesystem(purpose, given, fd)
        _check_size(purpose, given, fst.st_size)
        # Left non-blocking: a regular file on a real filesystem never says
        # EAGAIN, anything else that would is refused by chunks().
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunks(fd: int, purpose: Purpose, given: str | os.PathLike[str],
           size: int = MiB) -> Iterator[bytes]:
    """The bytes of a checked descriptor in pieces, never more than the
    purpose's bound (a file that grows past it while being read is refused)."""
    limit = purpose.limit if purpose.limit is not None else SHEBANG_BYTES
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(limit + 1 - total, size))
        except BlockingIOError:
            raise _refused(purpose, os.fspath(given), "a read of it would block: not a "
                           "file", "choose a regular file on a real filesystem") from None
        if not chunk:
            return
        total += len(chunk)
        if total > limit:
            _check_size(purpose, os.fspath(given), total)  # grew while being read
            return
        yield chunk


def read_fd(fd: int, purpose: Purpose, given: str | os.PathLike[str]) -> bytes:
    """The bytes of a checked descriptor, never more than the purpose's bound."""
    return b"".join(chunks(fd, purpose, given))


def read(path: str | os.PathLike[str], purpose: Purpose) -> bytes:
    """The checked bytes of PATH (see open_checked for the errors)."""
    fd = open_checked(path, purpose)
    try:
        return read_fd(fd, purpose, path)
    finally:
        os.close(fd)


def read_each(paths: Iterable[P], purpose: Purpose) -> Iterator[tuple[P, bytes]]:
    """(path, its checked bytes) of each of PATHS, as read(path) gives them
    (its errors too, when one is raised).

    `db status` reads every migration: their directory is walked once and
    held open, each regular file in it opened relative to it (O_NOFOLLOW),
    and the filesystem asked once for them all.  Anything else (a symlink,
    a check that fails) goes through read() itself, so what is refused, and
    how, is read()'s.
    """
    # The directory last tried, and when it could be held open: (its
    # descriptor, its st_dev, its filesystem is a real one).
    tried: str | None = None
    held: tuple[int, int, bool] | None = None
    try:
        for path in paths:
            directory, name = os.path.split(_text(path))
            if directory != tried:
                if held is not None:
                    os.close(held[0])
                    held = None
                tried = directory
                dfd = _open_directory(directory or ".", purpose)
                if dfd is not None:
                    plain = _NOT_FILES.get(_fs_type(dfd) or 0) is None
                    held = (dfd, os.fstat(dfd).st_dev, plain)
            opened = _open_in(held[0], name, purpose) if held is not None else None
            if opened is None or held is None:
                yield path, read(path, purpose)
                continue
            fd, dev = opened
            try:
                # Beside the directory held open, on its device: the same
                # filesystem, asked once (a FUSE mount has a device of its own).
                if dev != held[1] or not held[2]:
                    _check_filesystem(purpose, os.path.abspath(_text(path)), fd)
                data = read_fd(fd, purpose, path)
            finally:
                os.close(fd)
            yield path, data
    finally:
        if held is not None:
            os.close(held[0])


def _text(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_directory(directory: str | os.PathLike[str], purpose: Purpose) -> int | None:
    """A descriptor of DIRECTORY, walked and checked as the directory of a
    file read() reads; None when anything is amiss (read() then says what)."""
    try:
        given, real, st = _walk(directory, purpose)
        if not stat.S_ISDIR(st.st_mode):
            return None
        _check_on_way(purpose, given, real, st)
        fd = os.open(real, _OPEN_FLAGS | os.O_DIRECTORY)
    except (OSError, MaintError):
        return None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        return None
    return fd


def _open_in(dfd: int, name: str, purpose: Purpose) -> tuple[int, int] | None:
    """NAME in the directory DFD opened and checked as open_checked() does
    (its filesystem aside), and its st_dev; None when anything is amiss."""
    if "/" in name:
        return None
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None  # a symlink, or what read() refuses
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dfd)
    except OSError:
        return None
    fst = os.fstat(fd)
    if (not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino)
            or not trusted_uid(fst.st_uid) or fst.st_mode & 0o022
            or (purpose.limit is not None and fst.st_size > purpose.limit)):
        os.close(fd)
        return None
    return fd, fst.st_dev


def check(path: str | os.PathLike[str], purpose: Purpose) -> bool:
    """Check PATH as for reading it, without reading; False when it is missing."""
    try:
        os.close(open_checked(path, purpose))
    except FileNotFoundError:
        return False
    return True


def check_directory(path: str | os.PathLike[str], purpose: Purpose) -> bool:
    """PATH is a directory, root's and not writable by others, not even
    with the sticky bit (its entries decide what runs, or are ivle-maint's
    own), and every directory on the way is checked.  False when it does
    not exist."""
    try:
        given, _real, st = _walk(path, purpose)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise _refused(purpose, given, "not a directory", "choose another directory")
    _check_node(purpose, given, st, "directory")
    return True


def socket(path: str | os.PathLike[str], purpose: Purpose) -> str:
    """PATH checked as a Unix socket whose answers root acts on: every
    directory on the way root's and not writable by others (nobody else can
    put another socket there), the socket itself root's (a socket another
    user made, in a sticky directory, would answer what that user likes).
    Its real path, to connect to; FileNotFoundError when it is missing."""
    given, real, st = _walk(path, purpose)
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else _kind(st)
        raise _refused(purpose, given, f"{kind}, not a socket", "choose its socket")
    if not trusted_uid(st.st_uid):
        raise _refused(purpose, given, f"owned by uid {st.st_uid}, not root",
                       "let root's process make it (no 'user' on its 'stats socket' line)")
    return real


def _program_at(path: str, purpose: Purpose, depth: int = 0) -> str:
    """PATH checked as a program root runs; it, as given but absolute."""
    given, real, st = _walk(path, purpose)
    _check_regular(purpose, given, st)
    _check_holder(purpose, given, real)
    _check_node(purpose, given, st)
    if not st.st_mode & 0o111:
        raise _refused(purpose, given, "not executable", "chmod +x it, or choose another")
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        head = os.read(fd, SHEBANG_BYTES)
    finally:
        os.close(fd)
    if head.startswith(b"#!"):
        # As the kernel reads it: the interpreter, then the rest of the line
        # as one argument.
        if b"\n" not in head and len(head) == SHEBANG_BYTES:
            # The kernel reads no more of it either, and cuts what it passes.
            raise _refused(purpose, given, f"its first line is longer than {SHEBANG_BYTES - 1} "
                           "bytes", "shorten its first line")
        line = head[2:].split(b"\n", 1)[0].strip(b" \t")
        words = line.split(None, 1)
        if words:
            if depth >= MAX_INTERPRETERS:
                raise _refused(purpose, given, "too many interpreters (#!)", "fix it")
            interpreter = os.fsdecode(words[0])
            try:
                real_interpreter = _program_at(interpreter, PROGRAM, depth + 1)
            except FileNotFoundError:
                raise _refused(purpose, given, f"its interpreter {interpreter} does not exist",
                               "fix its first line") from None
            if "env" in (os.path.basename(interpreter),
                         os.path.basename(os.path.realpath(real_interpreter))):
                argument = os.fsdecode(words[1].strip(b" \t")) if len(words) > 1 else ""
                _env_program(purpose, given, argument, depth + 1)
    return given


_ENV_FLAGS = {"-v", "--debug"}  # change nothing env looks up
_ENV_CLEAR = {"-i", "-", "--ignore-environment"}
_ENV_DEFAULT_PATH = "/bin:/usr/bin"  # env's (execvp's) search without a PATH
_ENV_QUOTING = set("'\"\\$#")


def _env_program(purpose: Purpose, given: str, argument: str, depth: int) -> None:
    """`#!/usr/bin/env ARGUMENT`: the program env will run, found as env
    finds it (execvp on the PATH the script inherits, or the one its first
    line sets), checked as a program root runs.  What this cannot follow as
    env would (quoting, ${VAR}, other options, a relative directory on the
    PATH) is refused, with its line."""

    def refuse(why: str) -> Refused:
        return _refused(purpose, given, f"its first line runs env {argument!r}: {why}",
                        "name the interpreter by its absolute path in its first line")

    name, search = _env_command(argument, refuse)
    if os.sep not in name:
        search = _ENV_DEFAULT_PATH if search is None else search
        for directory in search.split(os.pathsep):
            if not directory.startswith("/"):
                raise refuse(f"{directory or 'the current directory'} on the PATH it "
                             "searches is not an absolute directory")
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                name = candidate
                break
        else:
            raise refuse(f"{name} is not found on the PATH it searches ({search})")
    try:
        _program_at(name, PROGRAM, depth)
    except FileNotFoundError:
        raise refuse(f"{name} does not exist") from None
    except Refused as exc:
        raise refuse(str(exc).removesuffix(f" ({_fix()})").removesuffix("; refused")) from None


def _env_command(argument: str, refuse: Callable[[str], Refused]) -> tuple[str, str | None]:
    """(the program env runs, the PATH it searches: None for env's default)."""
    split = argument.startswith(("-S", "--split-string="))
    if argument.startswith("--split-string="):
        words = argument.split("=", 1)[1].split()
    elif split:
        words = argument[2:].split()
    elif argument.startswith("-") or not argument:
        raise refuse("an option ivle-maint does not follow" if argument else "no program")
    else:
        words = [argument]  # one argument, spaces and all, as env gets it
    search: str | None = os.environ.get("PATH")
    index = 0
    while index < len(words):
        word = words[index]
        if split and _ENV_QUOTING & set(word):
            raise refuse("quoting or variables, which ivle-maint does not follow")
        if word in _ENV_CLEAR:
            search = None
        elif word in ("-u", "--unset") and index + 1 < len(words):
            index += 1
            search = None if words[index] == "PATH" else search
        elif word.startswith("--unset="):
            search = None if word.split("=", 1)[1] == "PATH" else search
        elif word.startswith("-") and word not in _ENV_FLAGS:
            raise refuse(f"the option {word}, which ivle-maint does not follow")
        elif "=" in word:
            name, value = word.split("=", 1)
            search = value if name == "PATH" else search
        elif word not in _ENV_FLAGS:
            return word, search
        index += 1
    raise refuse("no program")


def program(name: str, search: str | None = None, purpose: Purpose = PROGRAM) -> str | None:
    """The absolute, checked path of the program NAME, or None when absent.

    A name with a slash is that file; a bare name is looked up in SEARCH
    (default $PATH) as the shell does, and the first executable found is
    checked: an unsafe one is refused (Refused), never skipped for the
    next.  Run it by the path returned, never by the name again.
    """
    if os.sep in name:
        try:
            return _program_at(name, purpose)
        except FileNotFoundError:
            return None
    search = os.environ.get("PATH", os.defpath) if search is None else search
    for directory in search.split(os.pathsep):
        if not directory:
            continue
        candidate = os.path.join(os.path.abspath(directory), name)
        # Only to skip what is absent or not executable, as the shell does:
        # the decision is _program_at's.
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            return _program_at(candidate, purpose)
        except FileNotFoundError:
            continue
    return None


def require_program(name: str, search: str | None = None,
                    purpose: Purpose = PROGRAM) -> str:
    """program(), with a one-line error when NAME is not found."""
    found = program(name, search, purpose)
    if found is None:
        raise MaintError(f"command not found: {name}")
    return found


def check_tree(root: str | os.PathLike[str], purpose: Purpose = SOURCE_TREE,
               _depth: int = 0) -> None:
    """Every entry of the tree ROOT is root's and not writable by others
    (its code runs as root, even to ask its version), and so is whatever a
    symlink in it leads to (a directory: checked as a tree of its own)."""
    devices = _Devices()
    given, real, st = _walk(root, purpose, devices)
    if not stat.S_ISDIR(st.st_mode):
        raise _refused(purpose, given, "not a directory", "choose another directory")
    _check_holder_dir(purpose, given, st)
    count = 0
    for top, dirs, files in os.walk(real):
        for name in sorted(dirs + files):
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise _refused(purpose, given, f"more than {MAX_TREE_ENTRIES} entries",
                               "choose the IVLE source tree itself")
            entry = os.path.join(top, name)
            est = os.lstat(entry)
            shown = os.path.join(given, os.path.relpath(entry, real))
            devices.check(purpose, given, shown, est)
            if stat.S_ISLNK(est.st_mode):
                _check_link_in_tree(purpose, shown, entry, est, _depth)
                continue
            if not trusted_uid(est.st_uid):
                raise _refused(purpose, given, f"{shown} in it is owned by uid {est.st_uid}",
                               "copy it to a directory only root can write, or chown -R root:")
            if est.st_mode & 0o022:
                raise _refused(purpose, given, f"{shown} in it is writable by others "
                                               f"(mode {_mode(est)})", "chmod -R go-w it")


def _check_link_in_tree(purpose: Purpose, shown: str, entry: str, est: os.stat_result,
                        depth: int) -> None:
    """A symlink in a source tree: root's, and where it leads checked too."""
    if not trusted_uid(est.st_uid):
        raise _refused(purpose, shown, f"symlink owned by uid {est.st_uid}", _fix())
    try:
        _, target, tst = _walk(entry, purpose)
    except FileNotFoundError:
        return  # dangling: nothing runs from it
    if not stat.S_ISDIR(tst.st_mode):
        _check_node(purpose, shown, tst)
    elif depth >= MAX_INTERPRETERS:
        raise _refused(purpose, shown, "too many symlinked directories", "copy the tree")
    else:
        check_tree(target, purpose, depth + 1)


def _check_holder_dir(purpose: Purpose, given: str, st: os.stat_result) -> None:
    if not trusted_uid(st.st_uid):
        raise _refused(purpose, given, f"owned by uid {st.st_uid}, not root",
                       "copy it to a directory only root can write, or chown -R root:")
    if st.st_mode & 0o022:
        raise _refused(purpose, given, f"writable by others (mode {_mode(st)})",
                       "chmod -R go-w it")
