"""The worker of a warm postinst (warm.py): started by the preinst, it loads
the after-phase, waits for the postinst's hand-over, runs it and exits.

Run as `python3 -m ivle_maint.warm_worker DIRECTORY [SECONDS]`; nothing
imports it (it imports the command line, which imports warm.py).
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What the postinst's hook loads: this worker's point (hooks: its phases).
from . import cli, hooks, upgrade  # noqa: F401
from .gates import processes
from .warm import DIRECTORY, MAX_REQUEST, WAIT_SECONDS, line_of, own_directory, peer, socket_path

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
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(65536, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if len(data) < 4:
        raise ValueError("no request")
    (size,) = struct.unpack("!I", data[:4])
    if size > MAX_REQUEST:
        raise ValueError("request too large")
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def _become(request: dict[str, Any], fds: list[int]) -> list[str]:
    """Take on the postinst's streams, directory, umask and environment
    (FDS are then closed and emptied: the caller closes none twice)."""
    os.chdir(str(request["cwd"]))
    os.umask(int(request["umask"]))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    fds.clear()
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
    encoding = sys.stdout.encoding or "utf-8"
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    sys.stdout, sys.stderr = (
        io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=encoding,
                         errors="backslashreplace", line_buffering=os.isatty(fd),
                         write_through=fd == 2)
        for fd in (1, 2))
    argv = [str(a) for a in request["argv"]]
    sys.argv = ["ivle-maint", *argv]
    return argv


def serve(directory: Path, seconds: float = WAIT_SECONDS) -> int:
    """Wait for one postinst and run it; 0 when none came."""
    path = socket_path(directory)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with contextlib.suppress(OSError):  # a live worker keeps its socket
        listener.connect(str(path))
        return 0
    listener.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(1)
    try:
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
        path.unlink(missing_ok=True)
        listener.close()


def _take(conn: socket.socket, loaded: Snapshot) -> int | None:
    """Run the request on CONN, or refuse it (None: wait for another)."""
    fds: list[int] = []
    try:
        pid, uid = peer(conn)
        request, fds = _receive(conn)
        why = _refusal(pid, uid, request, fds, loaded)
        if not why:
            argv = _become(request, fds)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        why = f"unreadable request ({exc})"
    if why:
        with contextlib.suppress(OSError):
            conn.sendall(f"no {why}\n".encode())
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None
    conn.sendall(b"ok\n")
    conn.settimeout(GO_SECONDS)
    if line_of(conn) != "go":  # the postinst gave up waiting: it starts cold
        return 1
    del argv  # sys.argv holds it: cli reads it there
    processes.on_behalf_of(pid)  # the postinst's callers are ours
    code = _run()
    with contextlib.suppress(OSError):
        conn.sendall(f"exit {code}\n".encode())
    return code


def _refusal(pid: int, uid: int, request: Any, fds: list[int], loaded: Snapshot) -> str:
    """Why this worker must not run REQUEST ("" if it may)."""
    try:
        same_place = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        same_place = False
    argv = request.get("argv") if isinstance(request, dict) else None
    if uid != 0:
        return "not root"
    if not same_place:
        return "another mount namespace"
    if not isinstance(argv, list) or argv[:2] != ["hook", "postinst"]:
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
