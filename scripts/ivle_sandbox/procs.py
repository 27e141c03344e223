"""Finding, starting and killing the sandbox's processes.

Every long-lived process the sandbox starts carries IVLE_SANDBOX=<root> in
its environment, which /proc/PID/environ keeps for life: that is how
teardown (and the reaper, after a crash) finds them all, whatever their
uid, session or parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

MARKER = "IVLE_SANDBOX"


def sandbox_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a sandbox process: ours, plus the marker."""
    env = dict(os.environ)
    env[MARKER] = str(root)
    env.update(extra or {})
    return env


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline")
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def marked(root: Path) -> list[int]:
    """Live processes whose environment carries this sandbox's marker."""
    needle = f"{MARKER}={root}".encode()
    me = os.getpid()
    return [
        pid
        for pid in all_pids()
        if pid != me and needle in _read(f"/proc/{pid}/environ").split(b"\0") and alive(pid)
    ]


def alive(pid: int) -> bool:
    """True while pid runs; zombies count as gone (and are reaped if ours)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat.rsplit(b")", 1)[1].split()[0]
    if state in (b"Z", b"X"):
        with contextlib.suppress(ChildProcessError):  # reap it if it is ours
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until the processes end; the ones still alive at the deadline."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in left if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def listening(port: int) -> bool:
    """Something listens on TCP port (IPv4), without connecting to it."""
    for line in _read("/proc/net/tcp").decode().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return True
    return False


def wait_listening(ports: Iterable[int], timeout: float) -> list[int]:
    """Wait until every port listens; the ports that still do not."""
    left = list(ports)
    deadline = time.monotonic() + timeout
    while True:
        left = [port for port in left if not listening(port)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_all(pids: Iterable[int], *, term_timeout: float = 3.0) -> list[int]:
    """SIGTERM, wait, SIGKILL; the pids that survived even that."""
    pids = list(pids)
    signal_all(pids, signal.SIGTERM)
    left = wait_gone(pids, term_timeout)
    signal_all(left, signal.SIGKILL)
    return wait_gone(left, 3.0)


# Runs as a short-lived parent so that the started processes are orphans
# from the start: our caller never has to reap them, and a process that is
# killed by someone else (ivle-maint) does not linger as our zombie.
_LAUNCHER = r"""
import json, os, subprocess, sys
pids = []
for spec in json.load(sys.stdin):
    uid = spec.get("uid")
    proc = subprocess.Popen(
        spec["argv"], executable=spec["executable"], cwd=spec["cwd"], env=spec["env"],
        user=uid, group=spec.get("gid"), extra_groups=[] if uid is not None else None,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    pids.append(proc.pid)
print(json.dumps(pids))
"""


def spawn_detached(specs: Sequence[Mapping[str, object]]) -> list[int]:
    """Start processes detached from us; their pids.

    Each spec: argv, executable, cwd, env, and optionally uid and gid.
    """
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER],
        input=json.dumps(list(specs)),
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    pids: list[int] = json.loads(out.stdout)
    return pids
