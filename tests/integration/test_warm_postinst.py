"""The warm postinst (ivle_maint/warm.py): a real worker process loads the
after-phase and runs a handed-over `hook postinst` exactly as the postinst's
own process would (the same output on the same streams, the same exit
status), once; whatever it must not run falls back to the cold start with
nothing run."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint import warm

REPO = Path(__file__).resolve().parents[2]
NOT_TAKEN = 99  # the client's exit status when no worker took the command
CLIENT = ("import sys; from pathlib import Path; from ivle_maint import warm; "
          "r = warm.hand_over(sys.argv[2:], Path(sys.argv[1])); "
          f"sys.exit({NOT_TAKEN} if r is None else r)")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the worker's directory is root's"),
    pytest.mark.once,
]


def postinst_env(tmp_path: Path) -> dict[str, str]:
    """What dpkg's postinst of ivle would have, on a node without settings."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8", "DPKG_MAINTSCRIPT_NAME": "postinst",
            "DPKG_MAINTSCRIPT_PACKAGE": "ivle",
            "IVLE_MAINT_CONF": str(tmp_path / "missing" / "ivle-maint.conf")}


@pytest.fixture
def directory() -> Iterator[Path]:
    # Short: a socket's path has 108 bytes at most (the tests' own $TMPDIR is long).
    run = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    yield run
    shutil.rmtree(run, ignore_errors=True)


def start_worker(directory: Path, seconds: float = 60) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivle_maint.warm_worker", str(directory), str(seconds)],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(directory.glob("postinst-*.sock")):
        assert worker.poll() is None, "the worker ended before it listened"
        assert time.monotonic() < deadline, "the worker never listened"
        time.sleep(0.05)
    return worker


def client(directory: Path, env: dict[str, str], *argv: str,
           user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLIENT, str(directory), *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False,
                          user=user)


def cold(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("argv", [
    ("hook", "postinst", "configure", "1.0"),     # settings missing: its one-line error
    ("hook", "postinst", "frobnicate"),           # dpkg's call unknown: exit 2
    ("hook", "postinst", "--help"),               # argparse's own exit
])
def test_a_handed_over_postinst_says_and_exits_as_its_own_process(directory, tmp_path, argv):
    env = postinst_env(tmp_path)
    worker = start_worker(directory)
    try:
        warm_run = client(directory, env, *argv)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    cold_run = cold(env, *argv)
    assert warm_run.returncode != NOT_TAKEN, warm_run.stderr
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == \
        (cold_run.returncode, cold_run.stdout, cold_run.stderr)
    assert not any(directory.iterdir())  # served once: its socket is gone
    assert client(directory, env, *argv).returncode == NOT_TAKEN  # the next starts cold


def test_what_it_must_not_run_is_refused_with_nothing_run(directory, tmp_path):
    env = postinst_env(tmp_path)
    worker = start_worker(directory)
    try:
        # Not a postinst; not root (the directory keeps it out): each refused,
        # the worker still waiting for the postinst.
        assert client(directory, env, "settings", "--spec").returncode == NOT_TAKEN
        assert client(directory, env, "hook", "postinst", "frobnicate",
                      user=65534).returncode == NOT_TAKEN
        assert worker.poll() is None
        taken = client(directory, env, "hook", "postinst", "frobnicate")
        assert taken.returncode == 2 and "frobnicate" in taken.stderr
        assert worker.wait(timeout=60) == 2
    finally:
        worker.kill()


def test_a_worker_nobody_asks_leaves_in_its_time(directory):
    worker = start_worker(directory, seconds=1)
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    assert not any(directory.iterdir())


def test_a_directory_others_may_enter_is_not_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert not warm.own_directory(shared, create=False)
    assert warm.hand_over(["hook", "postinst", "configure", "1.0"], shared) is None
    # Closed itself, but in a directory others may write (the gate's walk),
    # or reached through a symlink: not used either, nor made there.
    shared.chmod(0o777)
    inner = shared / "run"
    inner.mkdir(mode=0o700)
    assert not warm.own_directory(inner, create=False)
    assert not warm.own_directory(shared / "new", create=True)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    assert warm.own_directory(closed, create=False)
    (tmp_path / "link").symlink_to(closed)
    assert not warm.own_directory(tmp_path / "link", create=False)


# -- generated peers and postinsts ----------------------------------------------

# What a root peer may do on the worker's socket (only root reaches it: the
# directory is root's 0700), each before the real postinst connects.
PEERS = ("silent", "header only", "cut short", "garbage", "deep json", "not a dict",
         "five descriptors", "no descriptors", "dribble")
BOUND = 20.0  # the worker drops a peer within REQUEST_SECONDS (5 s), with slack


def _request(env: dict[str, str], *argv: str) -> bytes:
    import json

    return json.dumps({"argv": list(argv), "env": env, "cwd": "/", "umask": 0o22,
                       "streams": [["utf-8", "strict", False, False]] * 3}).encode()


def _hostile(path: Path, kind: str, hold: list[socket.socket]) -> None:
    """KIND done on a connection of its own; kept open (HOLD) like a peer that
    stopped there."""
    import array
    import struct

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn.connect(str(path))
            break
        except BlockingIOError:  # the worker's backlog is full: it is still loading
            assert time.monotonic() < deadline
            time.sleep(0.05)
    hold.append(conn)
    body = _request({}, "hook", "postinst", "frobnicate")
    fds = [0, 1, 2]
    if kind == "silent":
        return
    if kind == "header only":
        conn.sendall(struct.pack("!I", len(body)))
        return
    if kind == "cut short":
        data = struct.pack("!I", len(body)) + body[:len(body) // 2]
    elif kind == "garbage":
        data = b"\xff" * 64
    elif kind == "deep json":
        body = b"[" * 200_000 + b"]" * 200_000
        data = struct.pack("!I", len(body)) + body
    elif kind == "not a dict":
        body = b'["hook", "postinst"]'
        data = struct.pack("!I", len(body)) + body
    elif kind == "five descriptors":
        data, fds = struct.pack("!I", len(body)) + body, [0, 1, 2, 0, 1]
    elif kind == "no descriptors":
        data, fds = struct.pack("!I", len(body)) + body, []
    else:  # "dribble": the request one byte a second, never done in time
        data = struct.pack("!I", len(body)) + body
        conn.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        threading.Thread(target=_dribble, args=(conn, data[1:]), daemon=True).start()
        return
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = conn.sendmsg([data], ancillary)
    with contextlib.suppress(OSError):
        conn.sendall(data[sent:])


def _dribble(conn: socket.socket, rest: bytes) -> None:
    with contextlib.suppress(OSError):
        for byte in rest[:30]:
            time.sleep(1)
            conn.send(bytes([byte]))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(peers=st.lists(st.sampled_from(PEERS), max_size=3),
       held=st.booleans(),
       sizes=st.lists(st.integers(0, 120_000), max_size=8))
def test_no_peer_holds_the_worker_and_any_postinst_is_served_in_time(tmp_path_factory, peers,
                                                                     held, sizes):
    """A root peer that sent nothing, part of a request, garbage, JSON nested
    past the parser, or the wrong descriptors: refused, or dropped within the
    worker's bound, never holding it; then the real postinst, whatever the
    size of its environment (each value below the kernel's 128 KiB), is
    served warm, in time, exactly as cold.  Before: a silent peer held the
    worker for ever (its recvmsg had no timeout) and the postinst behind it
    waited REPLY_SECONDS, then started cold; an environment over the
    socket's buffer (some 200 KiB) was sent in part (sendmsg with a timeout),
    the worker waited for the rest, the postinst 30 s for "ok", then cold."""
    directory = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    tmp_path = tmp_path_factory.mktemp("env")
    env = postinst_env(tmp_path)
    env.update({f"BIG{i}": "x" * size for i, size in enumerate(sizes)})
    hold: list[socket.socket] = []
    worker = start_worker(directory)
    try:
        path = next(directory.glob("postinst-*.sock"))
        for kind in peers:
            for conn in hold:  # one at a time: a full backlog is refused, cold
                conn.close()
            hold.clear()
            _hostile(path, kind, hold)
        if not held:  # else the last stays open while the postinst connects
            for conn in hold:
                conn.close()
        started = time.monotonic()
        warm_run = client(directory, env, "hook", "postinst", "frobnicé")
        took = time.monotonic() - started
        assert warm_run.returncode != NOT_TAKEN, (took, warm_run.stderr)
        assert took < BOUND * max(1, len(peers)), took
        assert worker.wait(timeout=60) == 2
    finally:
        worker.kill()
        worker.wait()
        for conn in hold:
            conn.close()
        shutil.rmtree(directory, ignore_errors=True)
    cold_run = cold(env, "hook", "postinst", "frobnicé")
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == \
        (cold_run.returncode, cold_run.stdout, cold_run.stderr)


def test_a_silent_peer_never_keeps_the_worker_past_its_time(directory):
    """A root peer that connects and sends nothing: before, the worker
    waited on it for ever (WAIT_SECONDS passed long ago)."""
    worker = start_worker(directory, seconds=2)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(next(directory.glob("postinst-*.sock"))))
        assert worker.wait(timeout=30) == 0
    finally:
        conn.close()
        worker.kill()
        worker.wait()
    assert not any(directory.iterdir())


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(io_encoding=st.sampled_from(["", "latin-1", "ascii", "cp1252", "utf-8",
                                    "latin-1:replace", "ascii:backslashreplace"]),
       utf8_mode=st.sampled_from(["", "0", "1"]),
       lc_all=st.sampled_from(["", "C", "C.UTF-8", "POSIX"]),
       unbuffered=st.booleans())
def test_the_postinst_output_is_in_its_own_encoding(tmp_path_factory, io_encoding, utf8_mode,
                                                    lc_all, unbuffered):
    """The postinst's interpreter makes its streams from its environment
    (PYTHONIOENCODING, PYTHONUTF8, the locale): the worker's bytes are the
    cold start's.  Before: the worker used its own (C.UTF-8), so under
    PYTHONIOENCODING=latin-1 'frobnicé' came out as UTF-8, not as the
    postinst's own process writes it."""
    directory = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    env = postinst_env(tmp_path_factory.mktemp("env"))
    for name, value in (("PYTHONIOENCODING", io_encoding), ("PYTHONUTF8", utf8_mode),
                        ("LC_ALL", lc_all), ("PYTHONUNBUFFERED", "1" if unbuffered else "")):
        if value:
            env[name] = value
    argv = ("hook", "postinst", "frobnicé")
    worker = start_worker(directory)
    try:
        warm_run = subprocess.run([sys.executable, "-c", CLIENT, str(directory), *argv],
                                  env=env, capture_output=True, timeout=120, check=False)
        assert worker.wait(timeout=60) == 2
    finally:
        worker.kill()
        worker.wait()
        shutil.rmtree(directory, ignore_errors=True)
    cold_run = subprocess.run([sys.executable, "-m", "ivle_maint", *argv], env=env,
                              capture_output=True, timeout=120, check=False)
    assert warm_run.returncode != NOT_TAKEN, warm_run.stderr
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == \
        (cold_run.returncode, cold_run.stdout, cold_run.stderr)


SLOWED_WORKER = """\
import os, runpy, sys, time
slowed = getattr(os, sys.argv[1])
def slow(*args, **kwargs):
    time.sleep(0.5)
    return slowed(*args, **kwargs)
setattr(os, sys.argv[1], slow)
sys.argv = ["warm_worker", *sys.argv[2:]]
runpy.run_module("ivle_maint.warm_worker", run_name="__main__")
"""


@pytest.mark.parametrize("slowed", ["chmod", "rename", "unlink"])
def test_the_socket_path_names_a_listening_socket_whenever_it_exists(directory, slowed):
    """A worker slowed at each call between making its socket and accepting:
    a postinst that finds the path connects (it is never refused, which would
    send it cold, nor finds a socket anyone may open).  Before: the path was
    bound, then chmod-ed, then listened on; a connect in between was refused
    (the PyPI suite's hostile-peer test met it)."""
    worker = subprocess.Popen(
        [sys.executable, "-c", SLOWED_WORKER, slowed, str(directory), "30"],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (found := list(directory.glob("postinst-*.sock"))):
            assert worker.poll() is None, "the worker ended before it listened"
            assert time.monotonic() < deadline, "the worker never listened"
        assert found[0].stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(found[0]))  # refused: ConnectionRefusedError
    finally:
        worker.kill()
        worker.wait()
