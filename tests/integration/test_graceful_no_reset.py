"""The web server's graceful stop resets no connection (listeners.py).

A stand-in for Apache, as unkind as Apache: a main process holding a
listening socket with a large backlog, children accepting slowly and
answering HTTP; on the graceful-stop (SIGWINCH) the main process closes
its listening socket, each child finishes the request in hand and exits
without accepting another, so the connections still queued are reset when
the last copy of the socket closes.  Clients in several threads open new
connections all through ServiceControl.graceful_stop (the init.d backend,
the stand-in's own init script).  With ivle-maint holding the sockets no
client is reset and every connection made is answered; with pidfd_getfd
unavailable (an old kernel: the fallback) the same load meets resets, so
the test can fail.  The load is generated (Hypothesis), never timed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.output import RecordingReporter
from ivle_maint.services import listeners
from ivle_maint.services.init_scripts import DONE, RUNNING, STOPPED, ServiceControl

pytestmark = [pytest.mark.needs_root, pytest.mark.once]

NAME = "standin"
REQUEST = b"GET / HTTP/1.0\r\nHost: standin\r\n\r\n"
ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

# The init script and the server in one: `standin stop|status` as an LSB
# script; `standin _serve FAMILY CHILDREN DELAY` the daemon (pidfile
# ROOT/run/standin.pid, its port in ROOT/run/standin.port).
STANDIN = r'''#!/usr/bin/python3
import os, select, signal, socket, sys, time
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "run"
PIDFILE = RUN / "standin.pid"
ANSWER = @ANSWER@


def running():
    try:
        pid = int(PIDFILE.read_text())
        with open(f"/proc/{pid}/stat", "rb") as handle:
            zombie = handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            ours = b"_serve" in handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if ours and not zombie else None


def child(listener, delay):
    # Told to stop: finish the request in hand, accept no other (the wakeup
    # fd makes the flag and the wait race-free, as Apache's pipe of death).
    leaving = []
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGWINCH, lambda *_: leaving.append(1))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    listener.setblocking(False)
    while not leaving:
        ready = select.select([listener, r], [], [])[0]
        if leaving or listener not in ready:
            continue
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue  # another child took it
        with conn:
            conn.setblocking(True)
            got = b""
            while b"\r\n\r\n" not in got:
                part = conn.recv(4096)
                if not part:
                    break
                got += part
            time.sleep(delay)
            conn.sendall(ANSWER)
    return 0


def serve(family, children, delay):
    fam, host = (socket.AF_INET6, "::1") if family == "6" else (socket.AF_INET, "127.0.0.1")
    listener = socket.socket(fam)
    # Apache's AcceptFilter on Linux: a connection is queued with its request.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
    listener.bind((host, 0))
    listener.listen(1024)
    kids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os._exit(child(listener, delay))
        kids.append(pid)

    def graceful(*_):
        listener.close()  # Apache's parent: its listening sockets first
        for kid in kids:
            os.kill(kid, signal.SIGWINCH)
        for kid in kids:
            os.waitpid(kid, 0)
        os._exit(0)

    def stop(*_):
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
            os.waitpid(kid, 0)
        os._exit(0)

    signal.signal(signal.SIGWINCH, graceful)
    signal.signal(signal.SIGTERM, stop)
    (RUN / "standin.port").write_text(str(listener.getsockname()[1]))
    PIDFILE.write_text(str(os.getpid()))
    while True:
        signal.pause()


action = sys.argv[1]
if action == "_serve":
    serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
elif action == "status":
    sys.exit(0 if running() else 3)
elif action == "stop":
    pid = running()
    if pid:
        os.kill(pid, signal.SIGTERM)
        while running():
            time.sleep(0.01)
    PIDFILE.unlink(missing_ok=True)
else:
    sys.exit(2)
'''.replace("@ANSWER@", repr(ANSWER))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("standin")
    (top / "etc" / "init.d").mkdir(parents=True)
    (top / "run").mkdir()
    script = top / "etc" / "init.d" / NAME
    script.write_text(STANDIN)
    script.chmod(0o755)
    return top


@contextlib.contextmanager
def standin(root: Path, family: str, children: int, delay: float) -> Iterator[int]:
    """The stand-in running; its port."""
    for stale in ("standin.pid", "standin.port"):
        (root / "run" / stale).unlink(missing_ok=True)
    proc = subprocess.Popen([str(root / "etc" / "init.d" / NAME), "_serve", family,
                             str(children), str(delay)], start_new_session=True)
    try:
        # Written as Apache writes its pidfile, truncated then filled: a
        # reader can find it empty, so wait for the number.
        while not (root / "run" / "standin.pid").exists() or \
                not (root / "run" / "standin.pid").read_text().strip():
            assert proc.poll() is None
            time.sleep(0.01)
        yield int((root / "run" / "standin.port").read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Load:
    """Clients in threads, each opening one new connection after another
    until told to stop; how each attempt ended, counted."""

    def __init__(self, family: str, port: int, clients: int) -> None:
        self.family = socket.AF_INET6 if family == "6" else socket.AF_INET
        self.address = ("::1" if family == "6" else "127.0.0.1", port)
        self.ended: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def count(self, how: str) -> None:
        with self.lock:
            self.ended[how] += 1

    def attempt(self) -> str:
        with socket.socket(self.family) as sock:
            # Long enough for a dropped SYN's retransmissions to meet the
            # port closed: "connection refused".
            sock.settimeout(20)
            try:
                sock.connect(self.address)
            except ConnectionRefusedError:
                time.sleep(0.01)
                return "refused"
            except OSError as err:
                return f"connect failed: {err!r}"
            try:
                sock.sendall(REQUEST)
                got = b""
                while part := sock.recv(4096):
                    got += part
            except OSError as err:
                if err.errno in (errno.ECONNRESET, errno.EPIPE):
                    return "reset"
                return f"failed: {err!r}"
            return "answered" if got == ANSWER else f"unanswered: {got!r}"

    def client(self) -> None:
        while not self.done.is_set():
            self.count(self.attempt())

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()

    def answered(self) -> int:
        with self.lock:
            return self.ended["answered"]


def stop_under_load(root: Path, family: str, children: int, clients: int, delay: float, *,
                    reporter: RecordingReporter | None = None) -> tuple[Counter[str], str, str]:
    """The ended-how counts of the clients, the stop's message and state."""
    control = ServiceControl(reporter or RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=60)
    with standin(root, family, children, delay) as port:
        assert control.status(NAME) == RUNNING
        with Load(family, port, clients) as load:
            # Serving, with connections queued behind the busy children.
            while load.answered() < 2 * children:
                time.sleep(0.01)
            result = control.graceful_stop(NAME)
        assert (result.outcome, result.state) == (DONE, STOPPED)
        assert control.status(NAME) == STOPPED
        return load.ended, result.message, result.state


@dataclass(frozen=True)
class Spec:
    family: str
    children: int
    queued: int  # clients beyond the children: their connections queue
    delay: float  # a child's seconds per request


LOADS = st.builds(Spec, family=st.sampled_from(["4", "6"]), children=st.integers(1, 3),
                  queued=st.integers(3, 12), delay=st.sampled_from([0.01, 0.03, 0.06]))


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=LOADS)
def test_no_client_is_reset(root: Path, spec: Spec):
    ended, message, _ = stop_under_load(root, spec.family, spec.children,
                                        spec.children + spec.queued, spec.delay)
    assert set(ended) <= {"answered", "refused"}, ended
    assert ended["answered"] >= 2 * spec.children
    assert "stopped gracefully (in-flight requests done" in message


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=LOADS)
def test_without_the_held_sockets_queued_clients_are_reset(
    root: Path, spec: Spec, monkeypatch: pytest.MonkeyPatch
):
    """What the held sockets are for: today's stop, as on a kernel without
    pidfd_getfd (a syscall number the kernel has not: ENOSYS).  The
    administrator is told, not only the log."""
    monkeypatch.setattr(listeners, "PIDFD_GETFD", 100000)
    reporter = RecordingReporter()
    ended, _, _ = stop_under_load(root, spec.family, spec.children,
                                  spec.children + spec.queued, spec.delay, reporter=reporter)
    assert ended["reset"] > 0, ended
    assert (f"warning: {NAME}: connections queued at its stop may be reset: listening "
            "sockets not held (pidfd_getfd: Function not implemented)") in reporter.lines


KILLED_STOP = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from ivle_maint.services.listeners import hold
pid = int(sys.argv[2])
held = hold(os.pidfd_open(pid), pid)
print(len(held.sockets), flush=True)
time.sleep(600)
"""
REPO = Path(__file__).resolve().parents[2]


def test_a_start_after_a_killed_stop_takes_its_filter_off(root: Path):
    """A stop killed (SIGKILL) between its filter and the signal leaves the
    server running, taking no new connection; the recovery's start (a no-op:
    it runs) takes the filter off."""
    control = ServiceControl(RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=60)
    with standin(root, "4", 1, 0.01) as port:
        pid = (root / "run" / "standin.pid").read_text()
        killed = subprocess.Popen(["/usr/bin/python3", "-c", KILLED_STOP, str(REPO), pid],
                                  stdout=subprocess.PIPE, text=True)
        assert killed.stdout is not None and killed.stdout.readline() == "1\n"
        killed.kill()
        killed.wait()
        with socket.socket() as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.connect(("127.0.0.1", port))  # its SYN dropped
        assert control.start(NAME).reason == "already running"
        assert control.reporter.lines == [  # type: ignore[attr-defined]
            f"warning: {NAME}: a graceful stop's filter was left on its listening sockets "
            f"(that stop killed?): taken off"]
        assert Load("4", port, 1).attempt() == "answered"


def test_a_queue_behind_a_long_request_does_not_take_its_time(root: Path):
    """The one child busy for 4 s with a request, another queued behind it,
    a 6 s [services] timeout: the queue is waited for half of it at most,
    so the request in flight still completes within the rest (waited the
    whole timeout, the queue would empty at 4 s and the stop cut the
    second request at 6 s)."""
    control = ServiceControl(RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=6)
    with standin(root, "4", 1, 4.0) as port:
        load = Load("4", port, 0)
        got: list[str] = []
        first = threading.Thread(target=lambda: got.append(load.attempt()))
        first.start()
        time.sleep(0.2)  # the child has taken it (it accepts at once)
        queued = threading.Thread(target=load.attempt)
        queued.start()
        result = control.graceful_stop(NAME)
        first.join()
        queued.join()
    assert got == ["answered"]
    assert "in-flight requests done" in result.message


def test_a_stale_pidfile_naming_another_users_process_names_no_main_process(root: Path):
    """The daemon gone, its pid taken by a student's process: the pidfile
    is not believed (gates/pidfiles.py), so nothing of that process is
    signalled, held or waited on; the stand-in's own pid is."""
    control = ServiceControl(RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=60)
    pidfile = root / "run" / f"{NAME}.pid"
    student = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "sleep", "60"])
    try:
        with standin(root, "4", 1, 0.01):
            main = control.main_process(NAME)
            assert main is not None and main[0] == int(pidfile.read_text())
            os.close(main[1])
            real = pidfile.read_text()
            pidfile.write_text(f"{student.pid}\n")
            assert control.main_process(NAME) is None
            pidfile.write_text(real)
        assert student.poll() is None  # never signalled
    finally:
        student.kill()
        student.wait()


STUDENT = 65534
# A student's process that notes every signal it gets; "ready" once it listens.
NOTING = ("import os, signal, sys, time\n"
          "for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,"
          " signal.SIGCONT):\n"
          "    signal.signal(sig, lambda n, _f: os.write(1, f'{n}\\n'.encode()))\n"
          "print('ready', flush=True)\n"
          "while True: time.sleep(60)\n")


def _student_at(pid: int) -> subprocess.Popen[str] | None:
    """A student's process noting its signals, with exactly this pid, or None
    when another fork on the machine took it first (ns_last_pid)."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str(pid - 1))
        proc = subprocess.Popen(["setpriv", f"--reuid={STUDENT}", f"--regid={STUDENT}",
                                 "--clear-groups", sys.executable, "-c", NOTING],
                                stdout=subprocess.PIPE, text=True, cwd="/")
        if proc.pid == pid:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            return proc
        proc.kill()
        proc.wait()
    return None


def _group_ids(pgid: int) -> list[int]:
    """Every process in group PGID, zombies too."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError), \
                open(f"/proc/{entry}/stat", "rb") as handle:
            if int(handle.read().rsplit(b")", 1)[1].split()[2]) == pgid:
                found.append(int(entry))
    return found


def _reap_group(pgid: int) -> None:
    """Reap group PGID, SIGKILLed: the stand-in is our child, its children
    orphans of ours (we are their subreaper: not every init reaps)."""
    guard = time.monotonic() + 30  # against a hang, not a measure of speed
    while (left := _group_ids(pgid)) and time.monotonic() < guard:
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.001)


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


PR_SET_CHILD_SUBREAPER = 36


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.sampled_from(["graceful_stop", "stop"]), at=st.integers(1, 3))
def test_a_daemon_whose_pid_a_student_takes_after_the_pidfile_is_judged_is_never_mistaken(
        root: Path, monkeypatch: pytest.MonkeyPatch, action: str, at: int) -> None:
    """The init.d backend's stop (plain or graceful) judges the pidfile's
    process (gates/pidfiles.py), then names it to the kernel: a pidfd to
    signal it, hold its sockets, wait for its exit.  At the AT-th pidfd
    opened on its pid (generated: each point where one is), the daemon ends
    and a student's process takes its pid.  That process is never
    signalled nor waited on: the stop returns with it still running,
    having got no signal."""
    control = ServiceControl(RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=3600)
    pidfile = root / "run" / f"{NAME}.pid"
    student: list[subprocess.Popen[str]] = []
    real_open = os.pidfd_open
    seen = [0]

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if pid == daemon and not student:
            seen[0] += 1
            if seen[0] == at:
                # It ends, its pidfile left, and so does its session (a pid
                # is never given out while a group or session has it).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                _reap_group(pid)
                taker = _student_at(pid)  # and a student's process takes its number
                if taker is not None:
                    student.append(taker)
        return real_open(pid, flags)

    outcome: list[object] = []
    with _subreaper(), standin(root, "4", 1, 0.01):
        daemon = int(pidfile.read_text())
        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
        worker = threading.Thread(target=lambda: outcome.append(getattr(control, action)(NAME)))
        worker.start()
        worker.join(60)  # against a hang, not a measure of speed
        hung = worker.is_alive()
        for proc in student:
            proc.kill()
        worker.join()
        monkeypatch.undo()
        noted = [proc.communicate()[0] for proc in student]
    if not student:
        return  # not reached, or another fork took the pid: nothing was tried
    assert not hung, f"{action} waited on the student's process that took pid {daemon}"
    assert noted == [""], f"the student's process that took pid {daemon} got signals: {noted}"


@pytest.mark.parametrize("at", ["hold", "wait", "signal"])
def test_a_web_server_that_ends_by_itself_during_its_graceful_stop_is_stopped(
        root: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """The main process ends by itself (a crash, an administrator's
    `apache2ctl stop`) at each point of the graceful stop after it was
    judged (generated: before its sockets are copied, while the queue is
    waited on, before the graceful-stop signal): the stop goes on to the
    verified stop, stopped, never a traceback.  Before: the signal through
    the pidfd of a process gone raised ProcessLookupError out of stop-web."""
    from ivle_maint.services import init_scripts

    control = ServiceControl(RecordingReporter(), backend="init.d",
                             initd_dir=root / "etc" / "init.d", timeout=60)

    def end_it() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon, signal.SIGKILL)
        _reap_group(daemon)

    def before(module: object, name: str, point: str) -> None:
        real = getattr(module, name)

        def then(*args: object, **kwargs: object) -> object:
            if at == point:
                end_it()
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, then)

    before(listeners, "hold", "hold")
    before(listeners.Held, "queued", "wait")
    before(init_scripts, "signal_and_drain", "signal")
    with _subreaper(), standin(root, "4", 1, 0.01):
        daemon = int((root / "run" / f"{NAME}.pid").read_text())
        result = control.graceful_stop(NAME)
    monkeypatch.undo()
    assert result.state == STOPPED, result
    assert control.status(NAME) == STOPPED
