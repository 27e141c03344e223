"""A warm postinst: the preinst leaves an interpreter with the after-phase loaded.

dpkg starts the postinst as a new process while the web server is down:
Python's start and the modules of the after-phase (psycopg2, pglast,
psutil, sh, the steps: some 0.2 s) are outage that a person typing IVLE's
commands does not pay.  So the preinst of an upgrade starts a worker,
`python3 -m ivle_maint.warm_worker`, beside its own before-phase, while the site
is still up: a fresh interpreter (nothing of the preinst's state) that
loads those modules and waits, for WAIT_SECONDS at most, on a socket in
/run/ivle-maint (root's, 0700; one per mount and PID namespace).  The
postinst's `ivle-maint hook postinst ...` hands it its arguments,
environment, working directory, umask and standard streams (SCM_RIGHTS)
and waits for its exit status, passing on the signals it gets; the worker
runs the command exactly as the postinst's own process would, once, and
exits.

It is only a faster start.  Anything not exactly right falls back to the
postinst's own start, before anything has run: no worker (none started, or
it waited too long), a peer that is not root or not in this mount
namespace, a module file or the interpreter changed since the worker
loaded it (python3-* upgraded in the same dpkg run).  Only a node booted
with systemd starts workers (see start_worker).
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MaintError
from .gates.environment import child_env
from .safepaths import check_dir, safe_dir

DIRECTORY = Path("/run/ivle-maint")
WHAT = "the warm postinst's directory"
WAIT_SECONDS = 300.0  # apt unpacks every package before it configures any
REPLY_SECONDS = 30.0  # the worker answers once its modules are loaded
REQUEST_SECONDS = 5.0  # a peer's whole request: the postinst sends it at once
MAX_REQUEST = 1 << 20
MAX_LINE = 256  # "ok", "go", "exit N", "no WHY"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _namespaces() -> str:
    return "-".join(os.readlink(f"/proc/self/ns/{ns}").split("[")[1].rstrip("]")
                    for ns in ("mnt", "pid"))


def socket_path(directory: Path = DIRECTORY) -> Path:
    return directory / f"postinst-{_namespaces()}.sock"


def own_directory(directory: Path, *, create: bool) -> bool:
    """DIRECTORY is root's alone (made so when CREATE): the gate's safe
    directory (root's, every directory on the way too), itself no symlink,
    and closed to others."""
    try:
        if create:
            safe_dir(directory, 0o700, WHAT)
        elif not check_dir(directory, WHAT):
            return False
        st = os.lstat(directory)
    except (MaintError, OSError):
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077


def peer(conn: socket.socket) -> tuple[int, int]:
    pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _UCRED.size))
    return pid, uid


# -- the postinst's side ----------------------------------------------------------


def wanted(argv: Sequence[str]) -> bool:
    """This command is dpkg's postinst hook, run by root."""
    return list(argv[:2]) == ["hook", "postinst"] and os.geteuid() == 0 and \
        os.environ.get("DPKG_MAINTSCRIPT_NAME") == "postinst"


def hand_over(argv: Sequence[str], directory: Path = DIRECTORY) -> int | None:
    """Run ARGV in a waiting worker: its exit status, or None when no worker
    took it (then nothing has run: start as usual)."""
    if not own_directory(directory, create=False):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # One bound for all before the worker's "ok": connecting, sending, its answer.
        deadline = time.monotonic() + REPLY_SECONDS
        if not _connect(conn, socket_path(directory), deadline):
            return None
        try:
            worker, uid = peer(conn)
            if uid != 0:
                return None
            request = json.dumps({"argv": list(argv), "env": dict(os.environ),
                                  "cwd": os.getcwd(), "umask": _umask(),
                                  "streams": streams()}).encode()
            if len(request) > MAX_REQUEST:
                return None
            pidfd = os.pidfd_open(worker)  # signals go to it, never to a reused pid
        except (OSError, ValueError):
            return None
        try:
            payload = struct.pack("!I", len(request)) + request
            # sendmsg on a socket with a timeout may send only a part (the
            # socket's buffer, some 200 KiB): the rest follows, or the worker
            # would wait for it while this side waits for its "ok".
            try:
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                sent = conn.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [0, 1, 2]))])
                conn.sendall(payload[sent:])
                if line_of(conn, deadline) != "ok":
                    return None  # refused before running anything
                # Only now does the worker run it: had this side given up waiting
                # for its "ok", it would find the connection closed instead.
                conn.sendall(b"go\n")
            except OSError:
                return None
            conn.settimeout(None)
            return _wait(conn, worker, pidfd)
        finally:
            os.close(pidfd)
    finally:
        conn.close()


def _connect(conn: socket.socket, path: Path, deadline: float) -> bool:
    """Connected to the worker before DEADLINE.  A worker still loading, or
    busy refusing another peer, has its backlog full: a connect with a
    timeout then fails at once (EAGAIN), not when the timeout passes."""
    while True:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            conn.connect(str(path))
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        except OSError:  # no worker, or a socket nobody listens on
            return False


def streams() -> list[list[Any]]:
    """How this interpreter made its standard streams from its environment
    (PYTHONIOENCODING, PYTHONUTF8, the locale, PYTHONUNBUFFERED): the worker
    makes its own the same way, so that its output is this process's."""
    found = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            raise ValueError("a standard stream that is not the interpreter's")
        found.append([stream.encoding, stream.errors, stream.line_buffering,
                      stream.write_through])
    return found


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def line_of(conn: socket.socket, deadline: float | None = None) -> str:
    """One line from the peer, before DEADLINE (time.monotonic(); None: as
    long as it takes) and of MAX_LINE bytes at most; "" when it ended
    without one.  TimeoutError (an OSError) when the deadline passed."""
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        if deadline is not None:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = conn.recv(MAX_LINE - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip() if data.endswith(b"\n") else ""


def _wait(conn: socket.socket, worker: int, pidfd: int) -> int:
    """The worker's exit status; the signals this process gets go to it
    (through its PIDFD: never to a process that took its pid since)."""
    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    try:
        words = line_of(conn).split()
    except OSError:  # the worker is gone: what it did is journaled, never run again here
        words = []
    if len(words) == 2 and words[0] == "exit" and words[1].isdigit():
        return int(words[1])
    sys.stderr.write(f"ivle-maint: the postinst's worker (pid {worker}) ended without an exit "
                     "status; see 'ivle-maint status'\n")
    return 1


# -- the preinst's side ------------------------------------------------------------


def start_worker(directory: Path = DIRECTORY) -> bool:
    """Start a worker for this upgrade's postinst (preinst upgrade, root, a
    node booted with systemd); True if one was started."""
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd/system"):
        return False
    import subprocess  # the preinst's only: the postinst's side needs none

    root = str(Path(__file__).resolve().parents[1])  # this ivle_maint, wherever it is
    try:  # only a faster start: never a reason for the preinst to fail
        if not own_directory(directory, create=True):
            return False
        subprocess.Popen(  # our own interpreter and module, through the environment's gate
            [sys.executable, "-m", "ivle_maint.warm_worker", str(directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True, cwd="/",
            env=child_env(os.environ, {"PYTHONPATH": root}))
    except OSError:
        return False
    return True
