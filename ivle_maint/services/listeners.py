"""Holding the web server's listening sockets through its graceful stop.

When Apache's graceful-stop closes its listening sockets, the kernel
resets every connection waiting in their accept queues (and answers SYNs
arriving then with a reset): a client that sent its request reads
"connection reset by peer".  So before the signal ivle-maint takes a copy
of each listening TCP socket of the main process (pidfd_getfd(2), through
the pidfd it signals by, so never another process's), attaches a socket
filter that drops new connections' SYNs (the client retransmits one after
about a second, by when the port is closed: "connection refused", stop
mode's outage) and waits until the accept queues are empty and the
handshakes begun before are done (the request sockets in the server's
own /proc/PID/net/tcp: with Apache's TCP_DEFER_ACCEPT a connection stays
one until its request comes; when they cannot be seen, the whole bounded
wait is taken): Apache's children take what was queued and answer it.  The copies
are closed only after the verified stop: their last reference, so the
socket ends then, with nothing queued.

Anything that fails here (no pidfd_getfd before Linux 5.6, no permission,
a process gone, no listening socket) leaves the stop as it was without
this: one log line, no exception.  If ivle-maint is killed (SIGKILL)
between the filter and the stop, the filter stays on a server still
running: the start of the recovery, finding it running, takes it off
(clear_leftover).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# pidfd_getfd(2): 438 on every Linux architecture (alpha: 548), since 5.6.
PIDFD_GETFD = 548 if platform.machine() == "alpha" else 438
# <asm-generic/socket.h> (the Python socket module does not define it).
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27
# tcp_info: tcpi_unacked and tcpi_sacked follow 8 bytes of u8 fields and
# four u32s; for a listening socket they are its accept queue's current
# length (sk_ack_backlog) and maximum (sk_max_ack_backlog).
_TCP_INFO_QUEUE = struct.Struct("=II")
_TCP_INFO_QUEUE_AT = 24
_TCP_INFO_SIZE = 104

# Classic BPF (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k).  A TCP
# socket's filter sees the segment from its TCP header: the flags are byte
# 13.  SYN set and ACK clear (a new connection) is dropped, all else kept:
# handshakes begun before complete and queued connections are served.
_BPF_LD_B_ABS, _BPF_ALU_AND_K, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x54, 0x15, 0x06
TCP_FLAGS_OFFSET = 13
_SYN, _ACK = 0x02, 0x10
_DROP_SYN = (
    (_BPF_LD_B_ABS, 0, 0, TCP_FLAGS_OFFSET),
    (_BPF_ALU_AND_K, 0, 0, _SYN | _ACK),
    (_BPF_JEQ_K, 1, 0, _SYN),  # a bare SYN: skip to the drop
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # keep the whole segment
    (_BPF_RET_K, 0, 0, 0),  # drop
)
_INSN = struct.Struct("=HBBI")

NO_NET_ADMIN = "attaching a socket filter needs CAP_NET_ADMIN, which this root lacks"
# After the filter is on, handshakes whose SYN came just before complete
# within a round trip: the queue is looked at no sooner than this.
SETTLE = 0.05
# Handshakes still open (their SYN came before the filter; with Apache's
# TCP_DEFER_ACCEPT a connection whose request has not come yet) are waited
# for this long at most: a client that never sends must not hold back the
# stop while new clients are already kept out.
HANDSHAKES = 3.0
# /proc/PID/net/tcp{,6}: the TCP sockets of PID's network namespace (not
# ours if it has its own); a request socket (half-open, or deferred) is
# SYN_RECV.
_PROC_NET = ("tcp", "tcp6")
_SYN_RECV = "03"
# ioctl: the network namespace of a socket, as an fd (<linux/sockios.h>).
SIOCGSKNS = 0x894C
# How often the accept queues are looked at (the kernel offers no event
# for a queue becoming empty).
POLL = 0.01


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy (close-on-exec) of the process's FD, or OSError."""
    import ctypes  # only a graceful stop needs it

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    new = libc.syscall(ctypes.c_long(PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd),
                       ctypes.c_uint(0))
    if new < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    return int(new)


def _program() -> bytes:
    return b"".join(_INSN.pack(*insn) for insn in _DROP_SYN)


def attach_syn_filter(sock: socket.socket) -> None:
    """Drop new connections' SYNs arriving at SOCK (OSError if refused)."""
    import ctypes

    program = ctypes.create_string_buffer(_program())
    # struct sock_fprog: unsigned short len, then the pointer (native alignment).
    fprog = struct.pack("@HP", len(_DROP_SYN), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def accept_queue(sock: socket.socket) -> tuple[int, int]:
    """A listening TCP socket's accept queue: (length now, maximum)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    now, most = _TCP_INFO_QUEUE.unpack_from(info, _TCP_INFO_QUEUE_AT)
    return int(now), int(most)


def _port(address: str) -> int | None:
    """The port of /proc/net/tcp's "0100007F:1F90" (hex), None if not one."""
    try:
        return int(address.rpartition(":")[2], 16)
    except ValueError:
        return None


def _netns_differs(sock: socket.socket, pid: int) -> bool:
    """True when SOCK is known to be in another network namespace than PID.
    Telling needs CAP_NET_ADMIN in the socket's namespace (SIOCGSKNS), which
    root in a container often lacks: then False, since a server makes its
    listening sockets in its own namespace."""
    import fcntl

    try:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return False
    try:
        theirs, its = os.fstat(fd), os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    finally:
        os.close(fd)
    return (theirs.st_dev, theirs.st_ino) != (its.st_dev, its.st_ino)


def _listening_tcp(sock: socket.socket) -> bool:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP)


@dataclass
class Held:
    """The copies of a process's listening sockets, filtered (close() them)."""

    sockets: list[socket.socket] = field(default_factory=list)
    why_not: str = ""  # when none are held: why
    pid: int = 0  # the process whose sockets they are, and its pidfd
    pidfd: int = -1  # (the caller's: left open)

    def queued(self) -> int:
        return sum(accept_queue(sock)[0] for sock in self.sockets)

    def half_open(self) -> int | None:
        """Handshakes not yet in an accept queue (request sockets) on the
        held sockets' ports, as the server's own network namespace has
        them (/proc/PID/net); None when they cannot be seen."""
        if not self.sockets:
            return 0
        if self.pid <= 0 or _netns_differs(self.sockets[0], self.pid):
            return None
        ports = {sock.getsockname()[1] for sock in self.sockets}
        count = 0
        for table in _PROC_NET:  # a v4-mapped client's is in tcp, not tcp6
            try:
                with open(f"/proc/{self.pid}/net/{table}", encoding="ascii") as handle:
                    rows = handle.read().splitlines()[1:]
            except FileNotFoundError:
                continue  # no IPv6 in that namespace
            except (OSError, UnicodeDecodeError):
                return None
            for row in rows:
                cols = row.split()
                if cols[3:4] == [_SYN_RECV] and _port(cols[1]) in ports:
                    count += 1
        # Read by pid: only if the process is still the one of the pidfd
        # were the tables its namespace's (a pid is reused once it is gone).
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, 0)
            except OSError:
                return None
        return count

    def wait_empty(self, timeout: float, handshakes: float | None = None) -> bool:
        """True once every accept queue is empty and no handshake is open
        (waited for up to HANDSHAKES seconds); False after TIMEOUT."""
        if not self.sockets:
            return True
        handshakes = HANDSHAKES if handshakes is None else handshakes
        start = time.monotonic()
        deadline = start + max(timeout, 0.0)
        time.sleep(min(SETTLE, max(timeout, 0.0)))
        while True:
            try:
                # Handshakes that cannot be seen are waited for the whole bound.
                if self.queued() == 0 and (time.monotonic() - start >= handshakes
                                           or self.half_open() == 0):
                    return True
            except OSError as err:  # cannot happen to a socket we hold; no reason to stop
                log.warning("listening sockets: accept queue unknown: %s", err)
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # A sleep that a signal would not cut short is all that's needed.
            select.select([], [], [], min(POLL, left))

    def close(self, detach: bool = False) -> None:
        """Close the copies.  DETACH when the server may still be serving
        (its stop failed): else the filter would keep refusing its clients
        unseen.  Not after a stop: once the server's own references are
        gone the filter is what keeps new connections out until the end."""
        for sock in self.sockets:
            if detach:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


def _copies(pidfd: int, pid: int) -> list[socket.socket]:
    """Copies of the listening TCP sockets of PID, whose pidfd is PIDFD
    (OSError when none can be taken: the caller closes those returned)."""
    names = os.listdir(f"/proc/{pid}/fd")
    seen: set[tuple[int, int]] = set()
    found: list[socket.socket] = []
    try:
        for name in names:
            if not name.isdigit():
                continue
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:["):
                    continue
            except OSError:
                continue  # closed meanwhile
            try:
                # Through the pidfd: if PID is gone (and reused) this fails
                # (ESRCH) rather than copy another process's descriptor.
                fd = pidfd_getfd(pidfd, int(name))
            except OSError as err:
                if err.errno == errno.EBADF:
                    continue  # closed meanwhile
                raise
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                key = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
                keep = key not in seen and _listening_tcp(sock)
            except OSError:
                keep = False
            if not keep:  # not ours to keep open a moment longer
                sock.close()
                continue
            seen.add(key)
            found.append(sock)
    except OSError:
        for sock in found:
            sock.close()
        raise
    return found


def hold(pidfd: int, pid: int) -> Held:
    """Copies of the listening TCP sockets of PID (whose pidfd is PIDFD),
    each with the SYN filter on; none, with the reason, on any failure."""
    held = Held(pid=pid, pidfd=pidfd)
    try:
        held.sockets = _copies(pidfd, pid)
    except OSError as err:
        held.why_not = err.strerror or str(err)
        if err.filename:  # listdir's
            held.why_not = f"cannot list /proc/{pid}/fd: {err.strerror}"
        elif err.errno == errno.EPERM:  # pidfd_getfd's, as nspawn's allow-list refuses it
            held.why_not += " (a container's seccomp filter?)"
        return held
    try:
        for sock in held.sockets:
            attach_syn_filter(sock)
    except OSError as err:
        held.close(detach=True)
        held.why_not = err.strerror or str(err)
        if err.errno == errno.EPERM:  # root in a container, its capabilities bounded
            held.why_not = NO_NET_ADMIN
        return held
    if not held.sockets:
        held.why_not = f"no listening TCP socket in /proc/{pid}/fd"
    return held


def why_not_here() -> str:
    """Why a graceful stop could not hold a listening socket on this
    system ("" when it can), found before anything stops: hold() itself,
    on a socket of our own (ivle-maint listens on no TCP port otherwise),
    so the same copy (pidfd_getfd: missing before Linux 5.6, or refused by
    a container's seccomp filter) and the same filter are tried."""
    try:
        pidfd = os.pidfd_open(os.getpid())
    except OSError as err:
        return f"pidfd_open: {err.strerror}"
    try:
        with socket.create_server(("127.0.0.1", 0)):
            held = hold(pidfd, os.getpid())
            held.close(detach=True)
    except OSError as err:
        return err.strerror or str(err)
    finally:
        os.close(pidfd)
    return held.why_not


def _has_our_filter(sock: socket.socket) -> bool:
    """True when SOCK's filter is the SYN filter (SO_GET_FILTER: its length
    is counted in instructions; a longer program is refused, EINVAL)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ours = _program()
    buf = ctypes.create_string_buffer(len(ours))
    count = ctypes.c_uint(len(_DROP_SYN))
    done = libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER, buf,
                           ctypes.byref(count))
    return done == 0 and count.value == len(_DROP_SYN) and buf.raw == ours


def clear_leftover(pidfd: int, pid: int) -> int:
    """Take the SYN filter off the listening sockets of PID (whose pidfd is
    PIDFD) where a graceful stop killed before its end (SIGKILL: no
    cleanup) left it on a server still running; how many.  Only this
    filter: a filter of the server's own is no business of ours."""
    try:
        found = _copies(pidfd, pid)
    except OSError as err:
        log.debug("listening sockets of %d not looked at: %s", pid, err)
        return 0
    cleared = 0
    for sock in found:
        with contextlib.suppress(OSError):
            if _has_our_filter(sock):
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                cleared += 1
        sock.close()
    return cleared
