"""HAProxy's runtime API: one server's state, read from its stats socket.

One exchange (`show servers state BACKEND`) over the Unix socket [pool]
haproxy_socket, bounded as a whole (gates/waits.SocketDeadline): a socket
that answers nothing, or a byte at a time, is cut at the bound.  What
HAProxy answers is untrusted text: parse() takes only an answer of the
exact shape HAProxy 2.x writes (format version 1, a header naming the
columns, one row per server, a blank line at the end) and refuses
anything else with one line naming the socket, never a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Settings
from ..errors import ConfigError, MaintError
from ..gates import trusted
from ..gates.text import shown
from ..gates.waits import SocketDeadline

FORMAT = "1"  # `show servers state`'s format version
MAX_ANSWER = 1024 * 1024  # bytes: a backend of thousands of servers is far less
MAX_FIELDS = 64
# HAProxy's names of proxies and servers: letters, digits, '-', '_', '.', ':'.
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
FIELD = re.compile(r"[a-z][a-z0-9_]{0,40}")
NUMBER = re.compile(r"[0-9]{1,10}")
NEEDED = ("be_name", "srv_name", "srv_op_state", "srv_admin_state")

# srv_op_state (HAProxy's enum srv_state)
STOPPED, STARTING, RUNNING, STOPPING = 0, 1, 2, 3
# srv_admin_state bits (enum srv_admin): forced, inherited, configured,
# resolver and health-check maintenance; inherited and forced drain.
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
DRAIN_BITS = 0x08 | 0x10

UP, NOLB, DRAIN, MAINT, DOWN = "UP", "NOLB", "DRAIN", "MAINT", "DOWN"
# Taking no new sessions while those in flight finish (NOLB: its health
# check answered 404 under http-check disable-on-404; DRAIN: set by hand).
DRAINED = frozenset({NOLB, DRAIN})


@dataclass(frozen=True)
class ServerState:
    """One server of a backend as HAProxy sees it."""

    backend: str
    server: str
    op_state: int
    admin_state: int

    @property
    def state(self) -> str:
        """As `show stat` names it: UP, NOLB, DRAIN, MAINT or DOWN."""
        if self.admin_state & MAINT_BITS:
            return MAINT
        if self.admin_state & DRAIN_BITS:
            return DRAIN
        return {RUNNING: UP, STOPPING: NOLB}.get(self.op_state, DOWN)

    @property
    def takes_new_sessions(self) -> bool:
        return self.state == UP


@dataclass(frozen=True)
class Target:
    """Where to ask: [pool]'s socket, backend and server (this node's name)."""

    socket: str
    backend: str
    server: str


def target(settings: Settings) -> Target | None:
    """[pool]'s HAProxy, checked (ConfigError, exit 2); None: balancer none."""
    pool = settings["pool"]
    if pool["balancer"] != "haproxy":
        return None
    path = str(pool["haproxy_socket"])
    if not path:
        raise ConfigError("[pool] balancer = haproxy needs [pool] haproxy_socket "
                          "(HAProxy's 'stats socket PATH level admin')")
    server = str(pool["server"]) or settings.node_name
    for key, value in (("backend", str(pool["backend"])), ("server", server)):
        if not NAME.fullmatch(value):
            raise ConfigError(f"[pool] {key} {shown(value, 80)}: not a name HAProxy "
                              "takes (letters, digits, '-', '_', '.', ':')")
    return Target(path, str(pool["backend"]), server)


def where(path: str) -> str:
    return f"HAProxy's stats socket {shown(path, 200)}"


def exchange(path: str, command: str, timeout: float) -> bytes:
    """COMMAND's whole answer from the stats socket PATH, within TIMEOUT
    seconds in all; MaintError naming the socket otherwise."""
    chunks: list[bytes] = []
    size = 0
    with SocketDeadline(timeout) as deadline:
        try:
            # Its answers decide when this slave stops serving: root's socket only.
            sock = deadline.connect_unix(trusted.socket(path, trusted.HAPROXY_SOCKET))
            with sock:
                sock.sendall(command.encode("ascii") + b"\n")
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        raise MaintError(f"{where(path)}: answered more than {MAX_ANSWER} "
                                         f"bytes to '{command}'; not HAProxy's answer")
                    chunks.append(chunk)
        except OSError as exc:
            if deadline.expired or isinstance(exc, TimeoutError):
                raise MaintError(f"{where(path)}: no whole answer to '{command}' within "
                                 f"{timeout:g}s") from None
            why = exc.strerror or shown(exc, 100) or type(exc).__name__
            raise MaintError(f"{where(path)}: {why}") from None
        if deadline.expired:  # shut down meanwhile: what came is cut short
            raise MaintError(f"{where(path)}: no whole answer to '{command}' within "
                             f"{timeout:g}s")
    return b"".join(chunks)


def command(backend: str) -> str:
    if not NAME.fullmatch(backend):
        raise ValueError(f"not a backend name: {backend!r}")
    return f"show servers state {backend}"


def parse(data: bytes, backend: str, server: str, path: str) -> ServerState:
    """SERVER of BACKEND in `show servers state BACKEND`'s answer DATA, read
    from the socket PATH; MaintError (one line naming it) for anything but
    HAProxy's answer, for no such backend and for no such server."""

    def refuse(why: str) -> MaintError:
        return MaintError(f"{where(path)}: {why}")

    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise refuse("answered bytes that are not ASCII text; not HAProxy's answer") from None
    if not text:
        raise refuse("answered nothing (is it HAProxy's 'stats socket'?)")
    if not text.endswith("\n\n"):
        raise refuse(f"answer cut short or not HAProxy's: {shown(text[-60:], 60)}")
    lines = text[:-2].split("\n")
    if lines[0].startswith("Can't find backend"):
        raise refuse(f"HAProxy has no backend {backend} (set [pool] backend)")
    if any(not line.isprintable() or "\t" in line for line in lines):
        raise refuse("answered control characters; not HAProxy's answer")
    if lines[0] != FORMAT or len(lines) < 2 or not lines[1].startswith("# "):
        raise refuse(f"not HAProxy's 'show servers state' answer: "
                     f"{shown(lines[0], 60)}")
    header = lines[1][2:].split(" ")
    if len(header) > MAX_FIELDS or not all(FIELD.fullmatch(f) for f in header) \
            or len(set(header)) != len(header) or not set(NEEDED) <= set(header):
        raise refuse(f"not HAProxy's 'show servers state' header: {shown(lines[1], 80)}")
    column = {name: header.index(name) for name in NEEDED}
    found: list[ServerState] = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split(" ")
        if len(fields) != len(header) or not all(fields):
            raise refuse(f"line {number}: {len(fields)} fields where the header names "
                         f"{len(header)}; not HAProxy's answer")
        be, srv, op, admin = (fields[column[name]] for name in NEEDED)
        if not (NAME.fullmatch(be) and NAME.fullmatch(srv)
                and NUMBER.fullmatch(op) and NUMBER.fullmatch(admin)):
            raise refuse(f"line {number}: not a server's state: {shown(line, 80)}")
        if be != backend:
            raise refuse(f"line {number}: a server of backend {shown(be, 100)}, "
                         f"not of {backend}")
        if int(op) > STOPPING or int(admin) > 0xFF:
            raise refuse(f"line {number}: server state {op}, admin state {admin}: "
                         "not states HAProxy has")
        if srv == server:
            found.append(ServerState(be, srv, int(op), int(admin)))
    if not found:
        raise refuse(f"HAProxy's backend {backend} has no server {server} "
                     "(set [pool] server)")
    if len(found) > 1:
        raise refuse(f"HAProxy's backend {backend} lists server {server} "
                     f"{len(found)} times; not HAProxy's answer")
    return found[0]


def server_state(at: Target, timeout: float) -> ServerState:
    """This server's state now, asked of HAProxy within TIMEOUT seconds."""
    data = exchange(at.socket, command(at.backend), timeout)
    return parse(data, at.backend, at.server, at.socket)
