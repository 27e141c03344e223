"""A Python snippet run in a child that SIGKILLs itself at its Nth step.

A step is every open, rename, unlink, chmod, chown, utime, directory
listing, attribute change and mkdir (Python's audit events) and every
os.write and os.fsync (counted by hand: they raise no audit event).  Run
with N = 1, 2, ... until the snippet finishes: a kill has then fallen at
every point of it, each in a fresh child.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Counts the body's file steps (writes, fsyncs, and the audit events of
# opening, renaming, removing ... a file) and ACTs at step POINT.
_COUNTER = """
import os, signal, sys
_point, _seen = int(sys.argv[1]), 0

def _step():
    global _seen
    _seen += 1
    if _seen == _point:
        ACT

def _counted(call):
    def wrapper(*args, **kwargs):
        _step()
        return call(*args, **kwargs)
    return wrapper

os.write, os.fsync = _counted(os.write), _counted(os.fsync)
sys.addaudithook(lambda event, args: _step() if event.split(".")[-1] in (
    "open", "rename", "remove", "chmod", "chown", "utime", "scandir", "listdir",
    "setxattr", "removexattr", "mkdir", "rmdir") else None)
"""
_PRELUDE = _COUNTER.replace("ACT", "os.kill(os.getpid(), signal.SIGKILL)")


def killed_at(point: int, setup: str, body: str, *args: str) -> bool:
    """Run SETUP (imports: not counted), then BODY, killed at BODY's step
    POINT; ARGS are sys.argv[2:].  True if it was killed, False if BODY
    finished first."""
    done = subprocess.run(
        [sys.executable, "-c", f"{setup}\n{_PRELUDE}\n{body}\n", str(point), *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode in (0, -9), done.stderr
    return done.returncode == -9


_FAILING = _COUNTER.replace(
    "ACT", 'code = int(os.environ["IVLE_TEST_ERRNO"]); raise OSError(code, os.strerror(code))')


def failed_at(point: int, code: int, setup: str, body: str, *args: str) -> str:
    """Run SETUP, then BODY, whose step POINT (as killed_at counts them)
    fails with OSError(CODE): a full disk, an I/O error.  Returns what BODY
    did: "finished", "reached" (the failure came and BODY finished all the
    same), or "raised TYPE: MESSAGE"."""
    wrapped = ("try:\n" + "".join(f"    {line}\n" for line in body.splitlines())
               + "except BaseException as exc:\n"
               + "    print('raised', type(exc).__name__ + ':', exc, flush=True)\n"
               + "else:\n    print('reached' if _seen >= _point else 'finished', flush=True)\n")
    done = subprocess.run(
        [sys.executable, "-c", f"{setup}\n{_FAILING}\n{wrapped}", str(point), *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "IVLE_TEST_ERRNO": str(code)})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
