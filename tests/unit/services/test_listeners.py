"""listeners: the SYN filter, the copies of a process's listening sockets
and every fallback, on real sockets and real processes (IPv4 and IPv6)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivle_maint.services import listeners
from ivle_maint.services.drain import open_pidfd
from ivle_maint.services.listeners import Held, accept_queue, attach_syn_filter, hold

REPO = Path(__file__).resolve().parents[3]
FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def listener(family: int, host: str, backlog: int = 16) -> socket.socket:
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def connects(family: int, address: tuple[str, int], seconds: float = 0.5) -> bool:
    """True if a connection is made; False when its SYN goes unanswered."""
    with socket.socket(family) as sock:
        sock.settimeout(seconds)
        try:
            sock.connect(address)
        except TimeoutError:
            return False
        return True


# -- the filter, on sockets of this process -------------------------------


@pytest.mark.parametrize(("family", "host"), FAMILIES)
def test_the_accept_queue_is_tcp_info_unacked(family: int, host: str):
    """tcpi_unacked of a listening socket: its queue; tcpi_sacked: the backlog."""
    with listener(family, host, backlog=7) as srv:
        assert accept_queue(srv) == (0, 7)
        clients = [socket.create_connection(srv.getsockname()[:2]) for _ in range(3)]
        assert accept_queue(srv) == (3, 7)
        srv.accept()[0].close()
        assert accept_queue(srv) == (2, 7)
        for client in clients:
            client.close()


@pytest.mark.parametrize(("family", "host"), FAMILIES)
def test_the_filter_drops_new_connections_only(family: int, host: str):
    with listener(family, host) as srv:
        # TCP_DEFER_ACCEPT: a handshake the client sees completed stays a
        # request socket until the first data; that data is let through
        # after the filter is on, as the last ACK of any handshake begun.
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
        address = srv.getsockname()[:2]
        assert connects(family, address)  # the control: no filter, no drop
        srv.accept()[0].close()
        with socket.create_connection(address) as queued, \
                socket.create_connection(address) as begun:
            queued.sendall(b"queued")
            attach_syn_filter(srv)
            assert not connects(family, address)  # a SYN: dropped, no reset
            begun.sendall(b"begun")
            got = set()
            srv.settimeout(5)
            for _ in range(2):
                conn, _ = srv.accept()
                with conn:
                    got.add(conn.recv(16))
            assert got == {b"queued", b"begun"}
            assert accept_queue(srv)[0] == 0


# -- the copies of another process's listening sockets --------------------

# A process holding two listening TCP sockets (one twice), a UDP socket, a
# TCP connection, a listening Unix socket and a file; it prints their
# ports and waits for its stdin to close.
HOLDER = r"""
import json, os, socket, sys
v4 = socket.create_server(("127.0.0.1", 0))
v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
again = v4.dup()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
conn = socket.create_connection(v4.getsockname())
served = v4.accept()[0]
unix = socket.socket(socket.AF_UNIX)
unix.bind("")  # abstract
unix.listen()
afile = open("/dev/null")
print(json.dumps([v4.getsockname()[1], v6.getsockname()[1]]), flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def process(code: str, user: int | None = None,
            wrapper: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen([*wrapper, sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, user=user)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc, proc.stdout.readline()
    finally:
        proc.stdin.close()
        proc.wait()


@contextlib.contextmanager
def held_of(pid: int) -> Iterator[Held]:
    pidfd = open_pidfd(pid)
    assert pidfd is not None
    result = hold(pidfd, pid)
    try:
        yield result
    finally:
        result.close(detach=True)
        os.close(pidfd)


def test_only_the_listening_tcp_sockets_are_held_and_filtered():
    with process(HOLDER) as (proc, line):
        v4, v6 = json.loads(line)
        with held_of(proc.pid) as held:
            assert held.why_not == ""
            assert sorted(sock.getsockname()[1] for sock in held.sockets) == sorted([v4, v6])
            assert sorted(sock.family for sock in held.sockets) == [socket.AF_INET,
                                                                   socket.AF_INET6]
            # The copy is the process's own socket: the filter is on it.
            assert not connects(socket.AF_INET, ("127.0.0.1", v4))
            assert not connects(socket.AF_INET6, ("::1", v6))
        # Detached: the process's sockets take connections again.
        assert connects(socket.AF_INET, ("127.0.0.1", v4))
        assert connects(socket.AF_INET6, ("::1", v6))


def test_a_queue_never_emptied_runs_out_the_bound():
    with (process(HOLDER) as (proc, line),
          socket.create_connection(("127.0.0.1", json.loads(line)[0])),
          held_of(proc.pid) as held):
        assert not held.wait_empty(0.2)  # the holder never accepts it
    with process(HOLDER) as (proc, _), held_of(proc.pid) as held:
        assert held.wait_empty(5)


# A listening socket deferring its accepts until data comes (Apache's
# AcceptFilter on Linux): a connection made without a request yet is a
# request socket, counted as an open handshake, not queued.
DEFERRING = r"""
import json, socket, sys
srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
print(json.dumps(srv.getsockname()[1]), flush=True)
for line in sys.stdin:
    conn = srv.accept()[0]
    conn.recv(16)
    conn.sendall(b"ok")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a socket's namespace (SIOCGSKNS)")
def test_open_handshakes_are_waited_for_a_bounded_time():
    with (process(DEFERRING) as (proc, line),
          socket.create_connection(("::1", json.loads(line)), timeout=5) as client,
          held_of(proc.pid) as held):
        assert proc.stdin is not None
        assert (held.queued(), held.half_open()) == (0, 1)
        assert held.wait_empty(60, handshakes=0.2)  # a client that never sends
        client.sendall(b"GET")  # its request: queued now, then accepted
        proc.stdin.write("accept\n")
        proc.stdin.flush()
        assert client.recv(2) == b"ok"
        assert (held.queued(), held.half_open()) == (0, 0)


CONTAINER_ROOT = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
NO_NET_ADMIN = r"""
import json, os, sys
from ivle_maint.services.drain import open_pidfd
from ivle_maint.services.listeners import Held, _copies
pid = int(sys.argv[1])
pidfd = open_pidfd(pid)
held = Held(sockets=_copies(pidfd, pid), pid=pid, pidfd=pidfd)  # no filter: it may be refused
print(json.dumps([len(held.sockets), held.queued(), held.half_open()]))
held.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another process's sockets")
def test_open_handshakes_are_seen_by_root_without_net_admin():
    """Root in a container (systemd-nspawn, LXC) lacks CAP_NET_ADMIN, so a
    socket's namespace cannot be asked (SIOCGSKNS): the server's own
    /proc/PID/net still shows its open handshakes.  Before, they counted
    as none there, and a client whose request came after the stop was
    reset (a booted cluster run in CI).  Both processes as in a container:
    the capability gone from their bounding set."""
    with (process(DEFERRING, wrapper=CONTAINER_ROOT) as (proc, line),
          socket.create_connection(("::1", json.loads(line)), timeout=5)):
        done = subprocess.run(
            [*CONTAINER_ROOT, sys.executable, "-c", NO_NET_ADMIN, str(proc.pid)],
            capture_output=True, text=True, check=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert json.loads(done.stdout) == [1, 0, 1], done.stderr


NOT_HELD = r"""
import json, sys
from ivle_maint.services.drain import open_pidfd
from ivle_maint.services.listeners import hold
held = hold(open_pidfd(int(sys.argv[1])), int(sys.argv[1]))
print(json.dumps([held.why_not, len(held.sockets)]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another process's sockets")
def test_a_filter_the_kernel_refuses_is_said_and_nothing_is_held():
    """Root without CAP_NET_ADMIN may not attach the filter (this kernel
    refuses it: EPERM): nothing held, the reason named, the server's
    sockets untouched (they take connections)."""
    with process(HOLDER, wrapper=CONTAINER_ROOT) as (proc, line):
        v4, v6 = json.loads(line)
        done = subprocess.run([*CONTAINER_ROOT, sys.executable, "-c", NOT_HELD, str(proc.pid)],
                              capture_output=True, text=True, check=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        why_not, count = json.loads(done.stdout)
        if why_not == "":  # a kernel that lets it: then the copies were held
            assert count == 2
        else:
            assert (why_not, count) == ("attaching a socket filter needs CAP_NET_ADMIN, "
                                        "which this root lacks", 0)
        assert connects(socket.AF_INET, ("127.0.0.1", v4))
        assert connects(socket.AF_INET6, ("::1", v6))


def test_handshakes_that_cannot_be_seen_take_the_whole_bound(
        monkeypatch: pytest.MonkeyPatch):
    """Not seen (None) is never taken for none: an empty queue is not enough
    before the handshake bound passes; seen as none, it is."""
    with listener(socket.AF_INET, "127.0.0.1") as srv:
        held = Held(sockets=[srv])
        monkeypatch.setattr(Held, "half_open", lambda self: None)
        assert not held.wait_empty(0.2, handshakes=60)
        assert held.wait_empty(60, handshakes=0.2)
        monkeypatch.setattr(Held, "half_open", lambda self: 0)
        assert held.wait_empty(60, handshakes=60)


def test_a_pid_gone_since_its_tables_were_read_counts_as_unseen():
    """The tables are read by pid: once the pidfd's process is gone its pid
    may be another's, whose namespace's tables they would be."""
    with process(SLEEPER) as (proc, _):
        pidfd = open_pidfd(proc.pid)
        assert pidfd is not None
    try:
        with listener(socket.AF_INET, "127.0.0.1") as srv:
            held = Held(sockets=[srv], pid=os.getpid(), pidfd=pidfd)
            assert held.half_open() is None
            alive = Held(sockets=[srv], pid=os.getpid())
            assert alive.half_open() == 0
    finally:
        os.close(pidfd)


# -- fallbacks: nothing held, the reason said, no exception ---------------

SLEEPER = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


def test_no_listening_socket():
    with process(SLEEPER) as (proc, _), held_of(proc.pid) as held:
        assert held.sockets == []
        assert held.why_not == f"no listening TCP socket in /proc/{proc.pid}/fd"


def test_no_pidfd_getfd(monkeypatch: pytest.MonkeyPatch):
    """A kernel without the syscall (before 5.6): ENOSYS; no filter left on."""
    monkeypatch.setattr(listeners, "PIDFD_GETFD", 100000)
    with process(HOLDER) as (proc, line), held_of(proc.pid) as held:
        assert held.sockets == []
        assert held.why_not == "pidfd_getfd: Function not implemented"
        assert connects(socket.AF_INET, ("127.0.0.1", json.loads(line)[0]))


def test_a_process_gone():
    with process(SLEEPER) as (proc, _):
        pidfd = open_pidfd(proc.pid)
        assert pidfd is not None
    try:
        held = hold(pidfd, proc.pid)
    finally:
        os.close(pidfd)
    assert held.sockets == []
    assert held.why_not.startswith(f"cannot list /proc/{proc.pid}/fd")


def test_never_another_process_s_sockets():
    """A pid that names another process than the pidfd's (a reused pid):
    its /proc/PID/fd is listed, but no copy is made through the pidfd."""
    with process(SLEEPER) as (gone, _):
        pidfd = open_pidfd(gone.pid)
        assert pidfd is not None
    try:
        with process(HOLDER) as (other, line):
            held = hold(pidfd, other.pid)
            assert held.sockets == []
            assert held.why_not == "pidfd_getfd: No such process"
            assert connects(socket.AF_INET, ("127.0.0.1", json.loads(line)[0]))
    finally:
        os.close(pidfd)


HOLD_AS_NOBODY = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from ivle_maint.services.listeners import hold
pid = int(sys.argv[2])
print(hold(os.pidfd_open(pid), pid).why_not)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a process of another user")
def test_no_permission():
    """Another user's process (root's, asked by nobody): EPERM, nothing held."""
    with process(HOLDER) as (proc, line):
        done = subprocess.run([sys.executable, "-c", HOLD_AS_NOBODY, str(REPO), str(proc.pid)],
                              capture_output=True, text=True, user=65534, check=True)
        # /proc/PID/fd of root's process is not nobody's to list either.
        assert done.stdout.strip() in (
            "pidfd_getfd: Operation not permitted",
            f"cannot list /proc/{proc.pid}/fd: Permission denied")
        assert connects(socket.AF_INET, ("127.0.0.1", json.loads(line)[0]))


# -- a filter a killed stop left behind -------------------------------------

OWN_FILTER = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from ivle_maint.services import listeners
srv = socket.create_server(("127.0.0.1", 0))
# A filter of the server's own (keep everything): not ours to take off.
listeners._DROP_SYN = ((0x06, 0, 0, 0xFFFFFFFF),)
listeners.attach_syn_filter(srv)
print(json.dumps(srv.getsockname()[1]), flush=True)
sys.stdin.read()
"""


def test_a_leftover_filter_is_taken_off():
    with process(HOLDER) as (proc, line):
        v4, v6 = json.loads(line)
        with held_of(proc.pid) as held:
            held.close()  # as a stop killed before its end: the filter stays
        assert not connects(socket.AF_INET, ("127.0.0.1", v4))
        pidfd = open_pidfd(proc.pid)
        assert pidfd is not None
        try:
            assert listeners.clear_leftover(pidfd, proc.pid) == 2
            assert listeners.clear_leftover(pidfd, proc.pid) == 0
        finally:
            os.close(pidfd)
        assert connects(socket.AF_INET, ("127.0.0.1", v4))
        assert connects(socket.AF_INET6, ("::1", v6))


def test_a_filter_of_the_server_s_own_is_left_alone():
    code = OWN_FILTER.replace("sys.argv[1]", repr(str(REPO)))
    with process(code) as (proc, _):
        pidfd = open_pidfd(proc.pid)
        assert pidfd is not None
        try:
            assert listeners.clear_leftover(pidfd, proc.pid) == 0
            (sock,) = listeners._copies(pidfd, proc.pid)
        finally:
            os.close(pidfd)
        with sock:
            assert not listeners._has_our_filter(sock)
            # Still attached: detaching it succeeds (ENOENT if there were none).
            sock.setsockopt(socket.SOL_SOCKET, listeners.SO_DETACH_FILTER, 0)


# -- said before anything stops (stop-web's preflight) ----------------------

WHY_NOT_HERE = ("import json\nfrom ivle_maint.services.listeners import why_not_here\n"
                "print(json.dumps(why_not_here()))\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: capabilities to drop")
def test_the_preflight_knows_whether_a_stop_could_hold_the_sockets():
    """Root: "" (a filter can be attached); root without CAP_NET_ADMIN on a
    kernel that then refuses the filter: the reason."""
    def asked(*wrapper: str) -> str:
        done = subprocess.run([*wrapper, sys.executable, "-c", WHY_NOT_HERE], cwd=REPO,
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        return str(json.loads(done.stdout))

    assert asked() == ""
    assert asked(*CONTAINER_ROOT) in ("", listeners.NO_NET_ADMIN)


@pytest.mark.parametrize(("mode", "why", "warned"), [
    ("stop", "", False), ("stop", listeners.NO_NET_ADMIN, True),
    ("maintenance", listeners.NO_NET_ADMIN, False)])
def test_stop_web_warns_before_a_stop_that_could_reset(monkeypatch: pytest.MonkeyPatch,
                                                       mode: str, why: str, warned: bool):
    """Said in the preflight, in stop mode only (maintenance mode's reload
    keeps the sockets open); a warning, never a refusal."""
    from ivle_maint.output import RecordingReporter
    from ivle_maint.steps import stop_web

    monkeypatch.setattr(listeners, "why_not_here", lambda: why)

    class Ctx:
        settings = {"services": {"web": "apache2"}, "web": {"during_upgrade": "stop"}}
        reporter = RecordingReporter()
        during_upgrade = mode

    stop_web.warn_unheld_listeners(Ctx)  # type: ignore[arg-type]
    expected = [f"warning: apache2: connections queued at its stop may be reset: listening "
                f"sockets cannot be held ({why})"] if warned else []
    assert Ctx.reporter.lines == expected


# A seccomp filter refusing pidfd_getfd with EPERM, as systemd-nspawn's
# allow-list does (x86_64 and aarch64: the same number, 438), installed in
# the child before it asks.
SECCOMP_REFUSES = r"""
import ctypes, errno, json, platform, struct
libc = ctypes.CDLL(None, use_errno=True)
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
insns = [(LD_W_ABS, 0, 0, 4), (JEQ_K, 1, 0, ARCH), (RET_K, 0, 0, ALLOW),
         (LD_W_ABS, 0, 0, 0), (JEQ_K, 0, 1, 438), (RET_K, 0, 0, ERRNO | errno.EPERM),
         (RET_K, 0, 0, ALLOW)]
prog = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
fprog = ctypes.create_string_buffer(struct.pack("@HP", len(insns), ctypes.addressof(prog)))
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
def prctl(*args):
    assert libc.prctl(*map(ctypes.c_ulong, args)) == 0, ctypes.get_errno()
prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
from ivle_maint.services.listeners import why_not_here
print(json.dumps(why_not_here()))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                    reason="the seccomp filter's architecture")
def test_the_preflight_names_a_seccomp_refusal_of_pidfd_getfd():
    done = subprocess.run([sys.executable, "-c", SECCOMP_REFUSES], cwd=REPO, capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert json.loads(done.stdout) == ("pidfd_getfd: Operation not permitted (a container's "
                                       "seccomp filter?)"), done.stderr
