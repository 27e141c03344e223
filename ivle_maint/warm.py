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
import json
import os
import signal
import socket
import stat
import struct
import sys
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
MAX_REQUEST = 1 << 20
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
        conn.settimeout(REPLY_SECONDS)
        try:
            conn.connect(str(socket_path(directory)))
        except OSError:
            return None
        try:
            worker, uid = peer(conn)
            if uid != 0:
                return None
            pidfd = os.pidfd_open(worker)  # signals go to it, never to a reused pid
            request = json.dumps({"argv": list(argv), "env": dict(os.environ),
                                  "cwd": os.getcwd(), "umask": _umask()}).encode()
            conn.sendmsg([struct.pack("!I", len(request)), request],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
            if line_of(conn) != "ok":
                return None  # refused before running anything
            # Only now does the worker run it: had this side given up waiting
            # for its "ok", it would find the connection closed instead.
            conn.sendall(b"go\n")
        except (OSError, ValueError):
            return None
        conn.settimeout(None)
        try:
            return _wait(conn, worker, pidfd)
        finally:
            os.close(pidfd)
    finally:
        conn.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def line_of(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip()


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
