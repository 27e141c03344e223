"""`ivle-maint pool` against a real HAProxy (Debian's), and against sockets
that are not HAProxy.

HAProxy checks two stand-in slaves every 100 ms (tests/support/balancer.py):
s1 is the node ivle-maint runs as, s2 another slave that stays in.  drain
must return only once HAProxy itself reports s1 drained, with a request in
flight to s1 finishing; ready, once s1's own IVLE page carries its media
version (the readiness check, asked of s1 itself) and HAProxy reports s1
UP.  A stats socket that answers garbage, nothing, or a byte at a time is
one line and exit 1, within [pool] drain_timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.pool import haproxy
from support.balancer import HAPROXY, MEDIA, Balancer, balancer, run_maint, wait_until

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.once,  # HAProxy and ivle-maint's own waits: no Python library's behaviour
    pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (scripts/install-deps)"),
]

STOPPING, DRAIN_BIT = 3, 0x08
TIMEOUT = 10  # [pool] drain_timeout: far above the 100 ms checks, so never reached


def write_conf(directory: Path, sock: Path, *, role: str = "slave",
               timeout: float = TIMEOUT, ready_url: str = "http://127.0.0.1/",
               ready_timeout: float = TIMEOUT) -> Path:
    """s1's settings, and its ivle.conf ([media] version MEDIA, as its page carries)."""
    etc = directory / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "ivle.conf").write_text(f"[media]\nversion = {MEDIA}\n")
    conf = directory / "ivle-maint.conf"
    conf.write_text(f"""\
[node]
role = {role}
name = s1
[paths]
state = {directory / 'state'}
run = {directory / 'run'}
log = {directory / 'log'}
backup = {directory / 'backup'}
ivle_conf_dir = {etc}
[web]
apache_dir = {directory / 'apache'}
[pool]
balancer = haproxy
haproxy_socket = {sock}
backend = ivle
drain_timeout = {timeout}
ready_url = {ready_url}
ready_timeout = {ready_timeout}
""")
    return conf


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Balancer, Path]]:
    """HAProxy with s1 (this node, answering ready 1.0) and s2, both UP."""
    mine = tmp_path / "s1" / "state" / "pool" / "answer"
    other = tmp_path / "s2" / "answer"
    for path in (mine, other):
        path.parent.mkdir(parents=True)
        path.write_text("ready 1.0\n")
    with balancer(tmp_path / "haproxy", {"s1": mine, "s2": other}) as lb:
        yield lb, write_conf(tmp_path / "s1", lb.socket, ready_url=lb.slaves["s1"].page_url)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_drain_returns_once_haproxy_reports_the_server_drained_and_ready_once_up(site):
    lb, conf = site
    done = run_maint(conf, "pool", "drain")
    assert done.returncode == 0, done.stderr
    # Looked at as soon as the command returned: HAProxy already saw it.
    assert lb.op_state("s1")[0] == STOPPING  # NOLB: http-check disable-on-404
    assert "HAProxy reports ivle/s1 NOLB after" in done.stderr
    assert not (conf.parent / "state" / "pool" / "answer").exists()
    # New sessions all go to s2 now.
    assert {lb.get("/")[1] for _ in range(6)} == {"s2"}

    shown = run_maint(conf, "pool", "status")
    assert shown.returncode == 0, shown.stderr
    assert "answer: drain" in shown.stdout and "HAProxy: ivle/s1 NOLB" in shown.stdout

    back = run_maint(conf, "pool", "ready", "--version", "1.1")
    assert back.returncode == 0, back.stderr
    assert lb.op_state("s1") == (2, 0)
    assert f"IVLE answered at {lb.slaves['s1'].page_url} (HTTP 200) after" in back.stderr
    assert "HAProxy reports ivle/s1 UP after" in back.stderr
    assert (conf.parent / "state" / "pool" / "answer").read_text() == "ready 1.1\n"
    assert {lb.get("/")[1] for _ in range(6)} == {"s1", "s2"}
    # The Apache configuration that serves the answer, generated beside.
    apache = (conf.parent / "apache" / "conf-available" / "ivle-maint-pool.conf").read_text()
    assert f'Alias /.ivle-maint/pool "{conf.parent}/state/pool/answer"' in apache


def test_a_slave_whose_page_lacks_its_media_version_stays_out_of_the_pool(site):
    """s1's web server answers, but with the old code's page: `pool ready`
    fails in one line, its answer still 'drain', HAProxy still sends it
    nothing; once its page carries the version, ready puts it back."""
    lb, conf = site
    assert run_maint(conf, "pool", "drain").returncode == 0
    conf.write_text(conf.read_text().replace(f"ready_timeout = {TIMEOUT}",
                                             "ready_timeout = 1"))
    lb.slaves["s1"].media = "1.0"
    done = run_maint(conf, "pool", "ready", "--version", "1.1", timeout=30)  # 30x the bound
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"IVLE at {lb.slaves['s1'].page_url} is not ready after" in line
    assert f"the page does not carry media version {MEDIA}" in line
    assert "this slave stays out of the pool" in line
    assert not (conf.parent / "state" / "pool" / "answer").exists()
    assert lb.op_state("s1")[0] == STOPPING  # NOLB still
    assert {lb.get("/")[1] for _ in range(6)} == {"s2"}
    lb.slaves["s1"].media = MEDIA
    back = run_maint(conf, "pool", "ready", "--version", "1.1")
    assert back.returncode == 0, back.stderr
    assert lb.op_state("s1") == (2, 0)


def test_a_request_in_flight_during_drain_completes(site):
    lb, conf = site
    s1 = lb.slaves["s1"]
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(lb.get("/slow", timeout=30))
        except Exception as exc:  # the test reports it
            results.append(exc)

    # Round robin: the slow request lands on s1 within two tries (one on
    # s2 is let go and tried again).
    s2 = lb.slaves["s2"]
    thread = None
    for _ in range(2):
        thread = threading.Thread(target=slow)
        thread.start()
        wait_until(lambda: s1.arrived.is_set() or s2.arrived.is_set(), 20,
                   "the slow request reached a server")
        if s1.arrived.is_set():
            break
        s2.release.set()
        thread.join(20)
        s2.arrived.clear()
    assert s1.arrived.is_set(), "the slow request never reached s1"
    done = run_maint(conf, "pool", "drain")
    assert done.returncode == 0, done.stderr
    assert lb.op_state("s1")[0] == STOPPING
    assert thread is not None and thread.is_alive()  # still in flight
    s1.release.set()
    thread.join(30)
    assert (200, "s1", b"slow answer done\n") in results, results


def test_a_server_drained_by_hand_counts_as_drained(site):
    lb, conf = site
    assert lb.ask("set server ivle/s1 state drain").strip() == ""
    state = haproxy.server_state(haproxy.target(load_settings(str(conf))), 5)
    assert (state.state, state.takes_new_sessions) == ("DRAIN", False)
    assert lb.op_state("s1")[1] & DRAIN_BIT


def test_a_server_or_backend_haproxy_lacks_is_one_line(site):
    _, conf = site
    conf.write_text(conf.read_text().replace("backend = ivle", "backend = nope"))
    done = run_maint(conf, "pool", "status")
    assert done.returncode == 1
    assert "HAProxy has no backend nope" in one_line(done.stderr)
    conf.write_text(conf.read_text().replace("backend = nope", "backend = ivle")
                    .replace("name = s1", "name = s9"))
    done = run_maint(conf, "pool", "status")
    assert done.returncode == 1
    assert "has no server s9" in one_line(done.stderr)


def test_refused_on_a_master_only_node(tmp_path):
    conf = write_conf(tmp_path, tmp_path / "none.sock", role="master")
    for action in ("status", "drain", "ready"):
        done = run_maint(conf, "pool", action)
        assert done.returncode == 2
        assert "role is master" in one_line(done.stderr)
    assert not (tmp_path / "state" / "pool").exists()


# -- a stats socket that is not HAProxy ---------------------------------------

@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose sockets' paths fit AF_UNIX's 108 bytes (tmp_path's may not)."""
    path = Path(tempfile.mkdtemp(prefix="pool-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeSocket:
    """A Unix socket server answering every connection with ANSWER, either
    at once or a byte every TRICKLE seconds, then closing (or holding it
    open: HOLD)."""

    def __init__(self, path: Path, answer: bytes, trickle: float = 0.0,
                 hold: bool = False) -> None:
        self.path, self.answer, self.trickle, self.hold = path, answer, trickle, hold
        self.connections = 0  # accepted so far
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(1)
                conn.recv(1024)
                if self.trickle:
                    for byte in self.answer:
                        if self.stop.wait(self.trickle):
                            return
                        conn.sendall(bytes([byte]))
                else:
                    conn.sendall(self.answer)
                if self.hold:
                    self.stop.wait(30)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)
        os.unlink(self.path)


REAL = (b"1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
        b"3 ivle 1 s1 127.0.0.1 2 0\n\n")


@pytest.mark.parametrize(("fault", "said"), [
    ((b"HTTP/1.0 200 OK\r\n\r\n<html>", 0, False), "cut short or not HAProxy's"),
    ((b"", 0, False), "answered nothing"),
    ((b"", 0, True), "no whole answer"),
    ((REAL, 0.2, False), "no whole answer"),
    ((b"\xff\xfe garbage\n\n", 0, False), "not ASCII"),
], ids=["http", "nothing", "silent", "trickle", "binary"])
def test_a_socket_that_is_not_haproxy_is_one_line_within_the_bound(
        tmp_path, short_dir, fault, said):
    sock = short_dir / "fake.sock"
    fake = FakeSocket(sock, *fault)
    try:
        conf = write_conf(tmp_path, sock, timeout=1)
        done = run_maint(conf, "pool", "drain", timeout=30)  # 30x the bound
    finally:
        fake.close()
    line = one_line(done.stderr)
    assert done.returncode == 1, done.stderr
    assert f"HAProxy's stats socket {sock}" in line and said in line


def test_no_socket_at_all_is_one_line(tmp_path):
    conf = write_conf(tmp_path, tmp_path / "absent.sock")
    done = run_maint(conf, "pool", "status")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "absent.sock" in line and "No such file" in line


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.lists(st.text("0123456789 abcdefghijklmnopqrstuvwxyz_#\n", max_size=40),
                  max_size=6).map(lambda lines: ("1\n" + "\n".join(lines) + "\n\n").encode()))
def test_any_answer_is_a_state_or_one_line_naming_the_socket(short_dir, garbage):
    sock = short_dir / f"g{time.monotonic_ns()}.sock"
    fake = FakeSocket(sock, garbage)
    try:
        at = haproxy.Target(str(sock), "ivle", "s1")
        try:
            state = haproxy.server_state(at, 2)
        except MaintError as exc:
            assert "\n" not in str(exc) and str(sock) in str(exc)
        else:
            assert (state.backend, state.server) == ("ivle", "s1")
    finally:
        fake.close()


def test_a_wait_haproxy_never_ends_stops_at_drain_timeout_in_one_line(site):
    lb, conf = site
    conf.write_text(conf.read_text().replace(f"drain_timeout = {TIMEOUT}", "drain_timeout = 0.5"))
    assert lb.ask("set server ivle/s1 state maint").strip() == ""  # held out by hand
    done = run_maint(conf, "pool", "ready", "--version", "1.1", timeout=30)  # 60x the bound
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "HAProxy still reports ivle/s1 MAINT after 0.5s ([pool] drain_timeout), not UP" in line
    assert "Apache does not serve /.ivle-maint/pool yet" in line  # none enabled here
    # The answer changed all the same: Apache answers ready.
    assert (conf.parent / "state" / "pool" / "answer").read_text() == "ready 1.1\n"


NOBODY = 65534


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(owner=st.sampled_from([0, NOBODY]), dir_owner=st.sampled_from([0, NOBODY]),
       dir_mode=st.sampled_from([0o755, 0o1777, 0o777, 0o775, 0o1775]))
def test_only_roots_socket_where_only_root_can_put_one_is_asked(
        short_dir, owner, dir_owner, dir_mode):
    """[pool] haproxy_socket's answers decide when a slave stops serving.
    A socket another user made (in /tmp, say), or one in a directory
    another user can write (who could put one there), answered what that
    user liked: "drained" while HAProxy still sent requests.  Now only
    root's socket, where only root can put one, is asked at all."""
    directory = short_dir / f"d{time.monotonic_ns()}"
    directory.mkdir()
    path = directory / "admin.sock"
    fake = FakeSocket(path, REAL)
    try:
        os.chown(path, owner, -1)
        os.chown(directory, dir_owner, -1)
        os.chmod(directory, dir_mode)
        safe_place = dir_owner == 0 and (not dir_mode & 0o022 or bool(dir_mode & 0o1000))
        try:
            state = haproxy.server_state(haproxy.Target(str(path), "ivle", "s1"), 2)
        except MaintError as exc:
            assert not (owner == 0 and safe_place), exc
            assert "\n" not in str(exc) and str(path) in str(exc)
            assert fake.connections == 0
        else:
            assert owner == 0 and safe_place
            assert state.state == "UP" and fake.connections == 1
    finally:
        fake.close()


@pytest.mark.parametrize("kind", ["file", "fifo", "directory"])
def test_what_is_no_socket_is_refused_in_one_line(short_dir, kind):
    path = short_dir / "admin.sock"
    {"file": path.touch, "fifo": lambda: os.mkfifo(path), "directory": path.mkdir}[kind]()
    with pytest.raises(MaintError) as caught:
        haproxy.server_state(haproxy.Target(str(path), "ivle", "s1"), 2)
    assert "not a socket" in str(caught.value) and "\n" not in str(caught.value)
