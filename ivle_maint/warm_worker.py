"""The worker of a warm postinst (warm.py): started by the preinst, it loads
the after-phase, waits for the postinst's hand-over, runs it and exits.

Run as `python3 -m ivle_maint.warm_worker DIRECTORY [SECONDS]`; nothing
imports it (it imports the command line, which imports warm.py).
"""

from __future__ import annotations

import array
import codecs
import contextlib
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the postinst's hook loads: this worker's point (hooks: its phases).
from . import cli, hooks, upgrade  # noqa: F401
from .gates import processes
from .warm import (
    DIRECTORY,
    MAX_REQUEST,
    REQUEST_SECONDS,
    WAIT_SECONDS,
    line_of,
    own_directory,
    peer,
    socket_path,
)

GO_SECONDS = 10.0  # the postinst's "go" follows the "ok" at once

Snapshot = dict[str, tuple[int, int, int, int]]


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def snapshot() -> Snapshot:
    """Each loaded module's file (and the interpreter) as it is now."""
    files = {sys.executable}
    files.update(f for m in list(sys.modules.values())
                 if isinstance(f := getattr(m, "__file__", None), str))
    found: Snapshot = {}
    for path in files:
        with contextlib.suppress(OSError):
            found[path] = _identity(path)
    return found


def changed(before: Snapshot) -> list[str]:
    """The files of BEFORE that are not as they were (or are gone)."""
    gone = []
    for path, seen in before.items():
        try:
            if _identity(path) != seen:
                gone.append(path)
        except OSError:
            gone.append(path)
    return sorted(gone)


def _load() -> None:
    """What the postinst's hook loads, and what its steps load to act."""
    cli.build_parser(cli.command_module(["hook"]))
    upgrade.preload()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One peer's request and the descriptors it passed, within
    REQUEST_SECONDS: a peer that sends too little, too slowly or nothing
    never holds the worker (nor the postinst waiting behind it)."""
    deadline = time.monotonic() + REQUEST_SECONDS

    def bounded() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not sent in time")
        conn.settimeout(left)

    fds = array.array("i")
    bounded()
    data, ancillary, flags, _addr = conn.recvmsg(65536, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:  # more descriptors than three: the rest were dropped
        raise ValueError(f"too many descriptors ({list(fds)})")
    if len(data) < 4:
        raise ValueError("no request")
    (size,) = struct.unpack("!I", data[:4])
    if size > MAX_REQUEST:
        raise ValueError("request too large")
    body = data[4:]
    while len(body) < size:
        bounded()
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    if len(body) != size:
        raise ValueError("more than the request")
    try:
        request = json.loads(body)
    except RecursionError:  # nested deeper than the parser goes
        raise ValueError("not a request") from None
    if not isinstance(request, dict):
        raise ValueError("not a request")
    return request, list(fds)


def _streams(request: dict[str, Any]) -> list[tuple[str, str, bool, bool]]:
    """The postinst's streams as its interpreter made them: a text encoding
    and error handler Python knows, two flags each (ValueError otherwise)."""
    found = request.get("streams")
    if not isinstance(found, list) or len(found) != 3:
        raise ValueError("no streams")
    streams = []
    for item in found:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)
                and isinstance(item[1], str) and all(isinstance(f, bool) for f in item[2:])):
            raise ValueError("not a stream")
        encoding, errors, line_buffering, write_through = item
        if not codecs.lookup(encoding)._is_text_encoding:  # LookupError is a ValueError
            raise ValueError(f"not a text encoding: {encoding}")
        codecs.lookup_error(errors)
        streams.append((encoding, errors, line_buffering, write_through))
    return streams


@dataclass(frozen=True)
class Request:
    """A postinst's request, every field checked (checked())."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    umask: int
    streams: list[tuple[str, str, bool, bool]]


def _text(value: Any) -> bool:
    return isinstance(value, str) and "\0" not in value


def checked(raw: dict[str, Any]) -> Request:
    """The request as the postinst sends it (ValueError otherwise): nothing
    of it is used before all of it is checked."""
    argv, env, cwd, umask = (raw.get(k) for k in ("argv", "env", "cwd", "umask"))
    if not isinstance(argv, list) or not all(_text(a) for a in argv):
        raise ValueError("argv: not a list of strings")
    if not isinstance(env, dict) or not all(
            _text(k) and k and "=" not in k and _text(v) for k, v in env.items()):
        raise ValueError("env: not an environment")
    if not isinstance(cwd, str) or not _text(cwd) or not os.path.isabs(cwd):
        raise ValueError("cwd: not an absolute path")
    if type(umask) is not int or not 0 <= umask <= 0o777:
        raise ValueError("umask: not a umask")
    return Request(argv, env, cwd, umask, _streams(raw))


def _become(request: Request, fds: list[int]) -> None:
    """Take on the postinst's streams, directory, umask and environment
    (FDS are then closed and emptied: the caller closes none twice)."""
    os.chdir(request.cwd)
    os.umask(request.umask)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    fds.clear()
    os.environ.clear()
    os.environ.update(request.env)
    # Made as the postinst's own interpreter made them (its locale,
    # PYTHONIOENCODING, PYTHONUTF8), not as this worker's, started in C.UTF-8.
    (sys.stdin, sys.stdout, sys.stderr) = (
        io.TextIOWrapper(io.FileIO(fd, "r" if fd == 0 else "w", closefd=False),
                         encoding=encoding, errors=errors, line_buffering=line_buffering,
                         write_through=write_through)
        for fd, (encoding, errors, line_buffering, write_through) in enumerate(request.streams))
    sys.argv = ["ivle-maint", *request.argv]


def serve(directory: Path, seconds: float = WAIT_SECONDS) -> int:
    """Wait for one postinst and run it; 0 when none came."""
    path = socket_path(directory)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with contextlib.suppress(OSError):  # a live worker keeps its socket
        listener.connect(str(path))
        return 0
    listener.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Bound and listening under a name of its own, then renamed into place:
    # the path never names a socket that refuses (a postinst there would
    # start cold) nor one with the umask's mode.
    building = path.with_name(f".{path.name}.{os.getpid()}")
    building.unlink(missing_ok=True)
    try:
        listener.bind(str(building))
        os.chmod(building, 0o600)
        listener.listen(1)
        os.rename(building, path)
        deadline = time.monotonic() + seconds
        _load()
        loaded = snapshot()
        while True:
            listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return 0
            with conn:
                taken = _take(conn, loaded)
            if taken is not None:
                return taken
    finally:
        building.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        listener.close()


def _take(conn: socket.socket, loaded: Snapshot) -> int | None:
    """Run the request on CONN, or refuse it (None: wait for another)."""
    fds: list[int] = []
    became = False
    try:
        pid, uid = peer(conn)
        why = _refusal(pid, uid)  # before a byte of its request is read
        if not why:
            raw, fds = _receive(conn)
            request = checked(raw)
            why = _unfit(request, fds, loaded)
        if not why:
            became = True
            _become(request, fds)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        why = f"unreadable request ({exc})"
    if why:
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(f"no {why}\n".encode())
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        # Half taken on (a directory gone meanwhile): nothing ran, but this
        # worker is no longer as started; the postinst starts cold.
        return 1 if became else None
    conn.sendall(b"ok\n")
    if line_of(conn, time.monotonic() + GO_SECONDS) != "go":
        return 1  # the postinst gave up waiting: it starts cold
    processes.on_behalf_of(pid)  # the postinst's callers are ours
    code = _run()
    with contextlib.suppress(OSError):
        conn.settimeout(None)
        conn.sendall(f"exit {code}\n".encode())
    return code


def _refusal(pid: int, uid: int) -> str:
    """Why this worker must not take a request of this peer ("" if it may)."""
    try:
        same_place = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        same_place = False
    if uid != 0:
        return "not root"
    if not same_place:
        return "another mount namespace"
    return ""


def _unfit(request: Request, fds: list[int], loaded: Snapshot) -> str:
    """Why this worker must not run REQUEST ("" if it may)."""
    if request.argv[:2] != ["hook", "postinst"]:
        return "not a postinst"
    if len(fds) != 3:
        return "not three streams"
    gone = changed(loaded)
    return f"changed since loaded: {gone[0]}" if gone else ""


def _run() -> int:
    """The command, as cli.main runs it in a process of its own."""
    try:
        code = cli.run_command()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # a bug: said as cli says it
        cli.report_bug(exc)
        code = 1
    cli.flush_all()
    return code


def main(args: Sequence[str]) -> int:
    directory = Path(args[0]) if args else DIRECTORY
    seconds = float(args[1]) if len(args) > 1 else WAIT_SECONDS
    if not own_directory(directory, create=False):
        return 1
    try:
        return serve(directory, seconds)
    except Exception:  # nothing to tell: the postinst starts as usual
        return 1


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
