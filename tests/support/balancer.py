"""A real HAProxy in front of two stand-in slaves, for the pool's tests.

Each stand-in slave is Python's http.server answering /.ivle-maint/pool
from its pool answer file as the slave's Apache Alias does (the file's
bytes, 200; absent, 404), /slow once the test lets it (a request in
flight), IVLE's page at /ivle/ (its static files under the stand-in's
media version: the readiness check's page), and anything else at once,
naming itself (X-Server).  HAProxy
(Debian's package) runs in the foreground with its own configuration and
stats socket in a temporary directory, checking each server every 100 ms
(haproxy(): in front of any servers, such as a sandbox cluster's slaves).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ivle_sandbox.postgres import free_port
from support.pages import ivle_page

URL = "/.ivle-maint/pool"
PAGE = "/ivle/"  # IVLE's page, for the readiness check
MEDIA = "1.1"  # the media version the stand-ins' pages carry, until a test changes it
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


@dataclass
class StandIn:
    """One slave's web server: serves its pool answer as Apache's Alias would."""

    name: str
    answer: Path
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    server: http.server.ThreadingHTTPServer | None = None
    media: str = MEDIA  # the media version its IVLE page carries

    @property
    def page_url(self) -> str:
        """IVLE's page on this stand-in ([pool] ready_url), once started."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{PAGE}"

    def start(self) -> int:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == URL:
                    try:
                        body, status = stand_in.answer.read_bytes(), 200
                    except FileNotFoundError:
                        body, status = b"not found\n", 404
                elif self.path == PAGE:
                    body, status = ivle_page(stand_in.media), 200
                elif self.path == "/slow":
                    stand_in.arrived.set()
                    stand_in.release.wait(30)
                    body, status = b"slow answer done\n", 200
                else:
                    body, status = f"answered by {stand_in.name}\n".encode(), 200
                self.send_response(status)
                self.send_header("X-Server", stand_in.name)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # HAProxy's health checks reset their connections once answered

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name=f"stand-in {self.name}",
                         daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class HAProxy:
    """HAProxy running: its stats socket, frontend port and process."""

    directory: Path
    socket: Path
    port: int
    process: subprocess.Popen[bytes]

    def ask(self, command: str) -> str:
        """The stats socket's answer to COMMAND (the test's own look)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(command.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def states(self) -> dict[str, tuple[int, int]]:
        """Every server's (srv_op_state, srv_admin_state), from HAProxy itself."""
        lines = self.ask(f"show servers state {BACKEND}").splitlines()
        header = lines[1][2:].split()
        rows = (dict(zip(header, line.split(), strict=True)) for line in lines[2:] if line)
        return {r["srv_name"]: (int(r["srv_op_state"]), int(r["srv_admin_state"]))
                for r in rows}

    def op_state(self, server: str) -> tuple[int, int]:
        """(srv_op_state, srv_admin_state) of SERVER, from HAProxy itself."""
        states = self.states()
        if server not in states:
            raise AssertionError(f"no server {server} in {states}")
        return states[server]

    def get(self, path: str, timeout: float = 10) -> tuple[int, str, bytes]:
        """One request through HAProxy: status, X-Server, body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.getheader("X-Server", ""), response.read()
        finally:
            conn.close()


@dataclass
class Balancer(HAProxy):
    """HAProxy in front of its two stand-in servers."""

    slaves: dict[str, StandIn] = field(default_factory=dict)


BACKEND = "ivle"
UP = 2  # srv_op_state: running (with srv_admin_state 0, it takes new sessions)


def config_text(sock: Path, port: int, servers: dict[str, int]) -> str:
    lines = "".join(f"    server {name} 127.0.0.1:{srv_port} check inter 100ms fall 2 rise 1\n"
                    for name, srv_port in servers.items())
    return f"""\
global
    stats socket {sock} level admin
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port}
    default_backend {BACKEND}
backend {BACKEND}
    balance roundrobin
    option httpchk GET {URL}
    http-check disable-on-404
    http-check expect status 200
{lines}"""


def wait_until(condition: object, within: float, what: str) -> None:
    """CONDITION() true within WITHIN seconds (a look every 20 ms), else fail naming WHAT."""
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def haproxy(directory: Path, servers: dict[str, int],
            up: Callable[[], Iterable[str]] = tuple) -> Iterator[HAProxy]:
    """HAProxy in front of SERVERS (name: its port on 127.0.0.1), checking
    each every 100 ms; yields once every server UP() names is UP."""
    if HAPROXY is None:
        raise RuntimeError("haproxy is not installed (scripts/install-deps)")
    directory.mkdir(parents=True, exist_ok=True)
    # A Unix socket's path holds at most 107 bytes (HAProxy takes 97); a
    # directory of root's that only root can write (ivle-maint asks no other).
    short = Path(tempfile.mkdtemp(prefix="hp-"))
    process = None
    try:
        sock, port = short / "stats.sock", free_port()
        conf = directory / "haproxy.cfg"
        conf.write_text(config_text(sock, port, servers))
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        site = HAProxy(directory, sock, port, process)
        wait_until(lambda: _all_up(site, list(up())), 20, "haproxy up with its servers UP")
        yield site
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()
        shutil.rmtree(short, ignore_errors=True)


def _all_up(site: HAProxy, names: list[str]) -> bool:
    if site.process.poll() is not None:
        stderr = site.process.stderr
        err = stderr.read().decode() if stderr else ""
        raise AssertionError(f"haproxy exited {site.process.returncode}: {err}")
    try:
        states = site.states()
    except (OSError, IndexError, ValueError):
        return False
    return all(states.get(name, (0, 0))[0] == UP for name in names)


@contextlib.contextmanager
def balancer(directory: Path, answers: dict[str, Path]) -> Iterator[Balancer]:
    """HAProxy in front of one stand-in slave per ANSWERS entry (name: its
    answer file), every server UP (or as its answer says) before it yields."""
    slaves = {name: StandIn(name, path) for name, path in answers.items()}
    started: list[StandIn] = []
    try:
        ports = {}
        for name, slave in slaves.items():
            ports[name] = slave.start()
            started.append(slave)
        with haproxy(directory, ports,
                     lambda: [n for n, s in slaves.items() if s.answer.exists()]) as hp:
            yield Balancer(hp.directory, hp.socket, hp.port, hp.process, slaves)
    finally:
        for slave in started:
            slave.stop()


def run_maint(conf: Path, *words: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """ivle-maint --config CONF WORDS..., as a command (its own process)."""
    env = {k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"}
    return subprocess.run([sys.executable, "-m", "ivle_maint", "--config", str(conf), *words],
                          check=False, capture_output=True, text=True, timeout=timeout,
                          env=env,
                          cwd=Path(__file__).resolve().parents[2])


APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")


@contextlib.contextmanager
def apache(work: Path, include: Path) -> Iterator[int]:
    """Debian's apache2 (-X: one process) with INCLUDE as its only
    configuration beyond a listener; yields its port."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "httpd.conf").write_text(
        f"ServerRoot {work}\nListen 127.0.0.1:{port}\nPidFile {work}/pid\n"
        f"ErrorLog {work}/error.log\nServerName localhost\nDocumentRoot {work}\n"
        f"LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n"
        f"LoadModule authz_core_module {MODULES}/mod_authz_core.so\n"
        f"Include {include}\n")
    process = subprocess.Popen([str(APACHE), "-X", "-f", str(work / "httpd.conf")],
                               env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            if process.poll() is not None:
                out = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise RuntimeError(f"apache2 refused the configuration: {out}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, 10, "apache2 listening")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()
