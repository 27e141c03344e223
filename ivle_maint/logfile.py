"""A log file per run, with UTC timestamps, for the administrator to read later.

Logs stay bounded: each run starts by keeping only the newest
`[logs] keep` files (the previous one plain, older ones gzip-compressed),
and an external command's output adds at most its first and last
`[logs] output_lines` lines, with a line saying how much was left out.
Logs are root:adm 0640 (as Debian's other logs), the directory 0750.

Every line goes through gates.text (logformat.SafeFormatter): text from
outside in a message is escaped, a traceback's lines are indented, and so
every line that starts at column 0 is one record's timestamp.  A log that cannot be
written (a full disk, an I/O error) stops logging, said once on stderr,
and never fails the run nor prints a traceback (TolerantHandler).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import stat
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MaintError
from .gates import clock, trusted
from .gates.rewrite import WriteFailed, replace_file
from .gates.text import shown
from .logformat import SAID, SafeFormatter
from .safepaths import open_nofollow, safe_dir

DEFAULT_KEEP = 20
DEFAULT_OUTPUT_LINES = 100
MAX_LINE = 2000  # characters of one output line kept in the log
LOG_GROUP = "adm"

# The bound of the current run's log (set by run_log): BoundedOutput's default.
_output_lines = DEFAULT_OUTPUT_LINES


class _UTCFormatter(SafeFormatter):
    converter = time.gmtime  # type: ignore[assignment]  # typeshed's overloads


class TolerantHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The run's log file: a write that fails ends the log, not the run.

    logging's own handler prints a traceback on stderr for each record it
    cannot write (a full disk: every line); this one says once that the
    rest of the run is not logged, and drops the records after it.
    """

    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.failed: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)  # a failure comes back through handleError

    def flush(self) -> None:
        if self.failed is None:
            try:
                super().flush()
            except (OSError, ValueError) as exc:
                self._stop(exc)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ValueError):  # ValueError: a closed file
            self._stop(exc)
        # Anything else is a record that does not format (a bug): dropped,
        # the log goes on.

    def _stop(self, exc: BaseException) -> None:
        self.failed = exc
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _tell(f"ivle-maint: warning: log {shown(self.path)}: {shown(why)}; "
              "the rest of this run is not logged")


def _tell(line: str) -> None:
    """A line on stderr, if stderr takes it."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _log_gid() -> int | None:
    """adm's gid when running as root (only root can give files to a group)."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(LOG_GROUP).gr_gid
    except KeyError:
        return None


def _logs(log_dir: Path) -> list[Path]:
    """Every log of earlier runs, oldest first by the order the runs were
    made in (the .nNNNNNN in their names; gates.clock), never by mtime or
    time stamp; never a symlink (rotation would copy its target into the
    log directory and delete real logs)."""
    found = [p for p in log_dir.iterdir()
             if p.name.endswith((".log", ".log.gz")) and stat.S_ISREG(p.lstat().st_mode)]
    # A compression killed after its .gz was in place, before the plain log
    # was removed, leaves both: one log, not two (counted twice, it would
    # make rotation delete an older log that keep says to keep).
    names = {p.name for p in found}
    found = [p for p in found if not (p.name.endswith(".gz") and p.name[:-3] in names)]
    # Logs of versions that recorded no order: older than every numbered one.
    return clock.oldest_first(found, lambda p: p.name,
                              legacy=lambda p: (p.lstat().st_mtime, p.name))


def log_stem(log_dir: Path, name: str) -> str:
    """NAME-UTCSTAMP.nNNNNNN: the time for people, the number for rotation."""
    number = clock.next_sequence(p.name for p in log_dir.iterdir())
    return f"{name.replace('/', '_')}-{clock.utc_stamp()}{clock.sequence_tag(number)}"


CHUNK = 1 << 20  # compression reads and writes this much at a time


def _gzipped(fd: int, path: Path) -> Generator[bytes, None, None]:
    """FD's bytes (read through the trusted gate, in pieces) as a gzip stream
    (no name, mtime 0), a chunk at a time: a log of any size (output_lines
    = 0 keeps a jail build's whole output) never sits in memory whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in trusted.chunks(fd, trusted.LOG, path, CHUNK):
        yield packer.compress(chunk)
    yield packer.flush()


def _compress(path: Path) -> None:
    """PATH -> PATH.gz with the same owner, mode, attributes and mtime; atomic.

    Streamed through the rewrite gate: however large the log, memory holds
    a chunk of it, never all."""
    target = path.with_name(path.name + ".gz")
    fd = trusted.open_checked(path, trusted.LOG)
    try:
        st = os.fstat(fd)
        with contextlib.closing(_gzipped(fd, path)) as chunks:
            replace_file(target, chunks, like=path)
    finally:
        os.close(fd)
    os.utime(target, (st.st_atime, st.st_mtime), follow_symlinks=False)
    path.unlink()


def prune(log_dir: Path, keep: int) -> None:
    """Keep the newest KEEP - 1 logs (the run about to start is the KEEP-th);
    compress all of them but the newest."""
    logs = _logs(log_dir)
    stale, kept = logs[: max(0, len(logs) - (keep - 1))], logs[len(logs) - (keep - 1):]
    for path in stale:
        _one_log(path, _remove)
    for path in kept[:-1]:
        if path.name.endswith(".log"):
            _one_log(path, _compress)  # replaces a twin .gz
    for path in kept[-1:]:
        _one_log(path, _drop_twin)  # the plain log is the one kept


def _one_log(path: Path, action: Callable[[Path], object]) -> None:
    """ACTION on one log; a log it cannot act on (another name of it kept by
    a backup tool's hard link, immutable, another user's) is left as it is,
    said on stderr: a log never stops the run.  A full or failing disk
    stops the rotation (_rotate says so)."""
    try:
        action(path)
    except (MaintError, OSError) as exc:
        if getattr(exc, "errno", None) in DISK_ERRORS:
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _tell(f"ivle-maint: warning: log {shown(path)} left as it is: {shown(why)}")


def _remove(path: Path) -> None:
    _drop_twin(path)
    path.unlink()


def _drop_twin(path: Path) -> None:
    """The .gz a killed compression left beside the plain log PATH: removed."""
    twin = path.with_name(path.name + ".gz")
    if path.name.endswith(".log") and twin.is_file() and not twin.is_symlink():
        twin.unlink()


# A disk that cannot take the log: the run goes on without it (under dpkg,
# failing would leave the package half-configured for the sake of a log).
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def _new_log(log_dir: Path, name: str) -> Path:
    """The new log's name: NAME-UTCSTAMP.nNNNNNN.log, never one that exists.

    Raises OSError when the disk refuses (DISK_ERRORS), MaintError else."""
    try:
        stem = log_stem(log_dir, name)
        path, number = log_dir / f"{stem}.log", 1
        while path.exists() or path.with_name(path.name + ".gz").exists():  # same second
            number += 1
            path = log_dir / f"{stem}_{number}.log"  # sorts after the first of that second
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise
        raise MaintError(f"{log_dir}: {exc.strerror or exc}") from None
    return path


def _stream(fd: int) -> Any:
    """A text stream on the descriptor just checked: the path is not opened again."""
    try:
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")
    except BaseException:
        os.close(fd)
        raise


def _create(path: Path) -> int:
    """PATH opened for appending, never through a symlink, root:adm 0640.

    Raises OSError when the disk refuses (DISK_ERRORS), MaintError else."""
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            gid = _log_gid()
            if gid is not None:
                os.fchown(fd, 0, gid)
        except BaseException:
            os.close(fd)
            raise
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise
        raise MaintError(f"{path}: {exc.strerror or exc}") from None
    return fd


def _rotate(log_dir: Path, keep: int) -> None:
    """prune(), but a full or read-only disk leaves the old logs as they are."""
    try:
        prune(log_dir, keep)
    except (OSError, WriteFailed) as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        for partial in log_dir.glob("*.gz.partial"):
            with contextlib.suppress(OSError):
                partial.unlink()
        reason = (exc.strerror if isinstance(exc, OSError) else None) or os.strerror(exc.errno)
        _tell(f"ivle-maint: warning: logs in {shown(log_dir)} not rotated: {shown(reason)}")


@contextmanager
def run_log(log_dir: Path, name: str, *, keep: int = DEFAULT_KEEP,
            output_lines: int = DEFAULT_OUTPUT_LINES) -> Iterator[Path]:
    """Log everything from the ivle_maint loggers to LOG_DIR/NAME-TIMESTAMP.log."""
    global _output_lines
    created = not log_dir.exists()
    safe_dir(log_dir, 0o750, "[paths] log")
    gid = _log_gid()
    if created and gid is not None:
        os.chown(log_dir, 0, gid)
    _rotate(log_dir, keep)
    logger = logging.getLogger("ivle_maint")
    previous, previous_lines = logger.level, _output_lines
    path = log_dir / f"{name.replace('/', '_')}.log"  # named in a warning until chosen
    try:
        path = _new_log(log_dir, name)
        stream = _stream(_create(path))
    except OSError as exc:  # DISK_ERRORS only: the disk, at any step of making the log
        _tell(f"ivle-maint: warning: log {shown(path)}: {shown(exc.strerror or exc)}; "
              "this run is not logged")
        handler: TolerantHandler | None = None
    else:
        handler = TolerantHandler(stream, path)
        handler.setFormatter(_UTCFormatter("%(asctime)sZ %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    _output_lines = output_lines
    try:
        yield path
    except BaseException as exc:
        # The log ends with why the run stopped; cli.py has said it on stderr.
        logger.error("run stopped: %s", exc or type(exc).__name__, extra={SAID: True})
        raise
    finally:
        _output_lines = previous_lines
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous)
            handler.close()
            with contextlib.suppress(OSError):  # the descriptor is closed all the same
                handler.stream.close()


def limits(settings: object) -> dict[str, int]:
    """run_log's keyword arguments from the [logs] settings."""
    section = settings["logs"]  # type: ignore[index]
    return {"keep": int(section["keep"]), "output_lines": int(section["output_lines"])}


class BoundedOutput:
    """One command's output for the log: its first and last N lines in full,
    and one line counting what was left out between them (N = 0: all)."""

    def __init__(self, emit: Callable[[str], None], lines: int | None = None) -> None:
        self.emit = emit
        self.lines = _output_lines if lines is None else lines
        self.seen = 0
        self.tail: deque[str] = deque(maxlen=max(self.lines, 1))
        self.left_out = 0
        self.left_out_chars = 0

    def __call__(self, text: str) -> None:
        self.seen += 1
        if len(text) > MAX_LINE:
            text = f"{text[:MAX_LINE]} [... {len(text) - MAX_LINE} more characters]"
        if self.lines == 0 or self.seen <= self.lines:
            self.emit(text)
            return
        if len(self.tail) == self.tail.maxlen:
            dropped = self.tail[0]
            self.left_out += 1
            self.left_out_chars += len(dropped) + 1
        self.tail.append(text)

    def close(self) -> None:
        if self.left_out:
            self.emit(f"[... {self.left_out} lines ({self.left_out_chars} characters) left out "
                      "here; [logs] output_lines = 0 keeps a command's whole output ...]")
        while self.tail:
            self.emit(self.tail.popleft())

    def __enter__(self) -> BoundedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
