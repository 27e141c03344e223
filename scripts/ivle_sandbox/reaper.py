"""A watchdog that cleans a sandbox up when its owner dies without doing so.

The owner keeps the write end of a pipe to the watchdog's stdin and never
writes to it.  When the owner ends in any way (even SIGKILL) the kernel
closes that end and the watchdog reads EOF: it then stops PostgreSQL,
kills every marked process, unmounts and removes the tree.  An owner that
cleaned up itself writes "disarm" first and the watchdog just exits.

The watchdog lives in the owner's mount namespace (it is forked from it),
so it can unmount what the owner mounted.  It imports only the standard
library and sibling stdlib-only modules, to start fast.

Run as: python3 -m ivle_sandbox.reaper ROOT [--pgdata DIR] [--remove PATH]...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ivle_sandbox import mountns, procs

SCRIPTS = Path(__file__).resolve().parent.parent


class Reaper:
    """Handle on a running watchdog."""

    def __init__(
        self, root: Path, *, pgdata: Path | None = None, remove: Sequence[Path] = ()
    ) -> None:
        argv = [sys.executable, "-m", "ivle_sandbox.reaper", str(root)]
        if pgdata is not None:
            argv += ["--pgdata", str(pgdata)]
        for path in remove:
            argv += ["--remove", str(path)]
        # mountns reads mountinfo with ivle_maint's parser: the repository too.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPTS), str(SCRIPTS.parent)]))
        env.pop(procs.MARKER, None)  # it must never match its own sweep
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=env,
            start_new_session=True,  # Ctrl-C to the test run must not kill it
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def disarm(self) -> None:
        """The owner cleaned up: let the watchdog exit without acting."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.write(b"disarm\n")
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._proc.wait(timeout=10)


def stop_postmaster(pgdata: Path, timeout: float = 10.0) -> None:
    """Immediate shutdown (SIGQUIT), then SIGKILL; no pg_ctl needed."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    procs.signal_all([pid], signal.SIGQUIT)
    if procs.wait_gone([pid], timeout):
        procs.signal_all([pid], signal.SIGKILL)
        procs.wait_gone([pid], 3.0)


def cleanup(root: Path, *, pgdata: Path | None = None, remove: Sequence[Path] = ()) -> None:
    """Brute-force teardown of everything a sandbox may have left behind."""
    if pgdata is not None:
        stop_postmaster(pgdata)
    procs.kill_all(procs.marked(root), term_timeout=2.0)
    mountns.unmount_under(root)
    for path in remove:
        if path.exists():
            mountns.remove_tree(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivle_sandbox.reaper")
    parser.add_argument("root", type=Path)
    parser.add_argument("--pgdata", type=Path)
    parser.add_argument("--remove", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.stdin.buffer.read().startswith(b"disarm"):
        return 0
    cleanup(args.root, pgdata=args.pgdata, remove=args.remove)
    return 0


if __name__ == "__main__":
    sys.exit(main())
