"""A pidfile's pid is believed only for its daemon's process (gates/pidfiles.py).

Real processes, real files: generated pidfiles (content, mode, owner)
naming a root process outside any jail (the daemon's kind), a process of
another user (what a reused pid may be: a student's), a root process in a
chroot (a jail's), or none at all.  Believed exactly when the pidfile is
root's and safe and the process is root's with the machine's root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.gates.pidfiles import main_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="processes of other users: root")

NOBODY = 65534
SLEEP = "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"
# Imports done, then into the chroot (a jail's root), then asleep.
CHROOTED = ("import os, sys, time; os.chroot(sys.argv[1]); os.chdir('/'); "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)")


@contextmanager
def process(kind: str, jail: Path) -> Iterator[int]:
    """A live process of KIND; its pid (a gone one's for 'gone')."""
    if kind == "gone":  # pids are below pid_max: no process has it
        yield int(Path("/proc/sys/kernel/pid_max").read_text())
        return
    argv = {"root": [sys.executable, "-c", SLEEP],
            "other user": ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", SLEEP],
            "chrooted root": [sys.executable, "-c", CHROOTED, str(jail)]}[kind]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


KINDS = ("root", "other user", "chrooted root", "gone")
FORMS = {"plain": "{pid}\n", "no newline": "{pid}", "spaces": "  {pid}  \n",
         "pid 1": "1\n", "garbage": "apache\n", "empty": "", "negative": "-{pid}\n"}
FILES = ("root 0644", "root 0666", "nobody 0644")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), form=st.sampled_from(sorted(FORMS)),
       file=st.sampled_from(FILES))
def test_a_pid_is_believed_only_for_a_root_process_with_the_machines_root(
        tmp_path: Path, kind: str, form: str, file: str) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    base.chmod(0o755)
    jail = base / "jail"
    jail.mkdir()
    pidfile = base / "daemon.pid"
    with process(kind, jail) as pid:
        pidfile.write_text(FORMS[form].format(pid=pid))
        owner, mode = file.split()
        pidfile.chmod(int(mode, 8))
        if owner == "nobody":
            os.chown(pidfile, NOBODY, NOBODY)
        found = main_process(pidfile)
        believed = None
        if found is not None:
            believed, pidfd = found
            os.close(pidfd)
        daemons = kind == "root" and form in ("plain", "no newline", "spaces") \
            and file == "root 0644"
        assert believed == (pid if daemons else None)


def test_no_pidfile_names_no_one(tmp_path: Path) -> None:
    assert main_process(tmp_path / "absent.pid") is None
