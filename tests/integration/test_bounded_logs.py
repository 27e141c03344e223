"""A run's log stays bounded however much IVLE's commands print (issue 15).

100 MB of ivle-buildjail output once made a 246 MB log.  Now a command
adds its first and last [logs] output_lines lines and one line counting
the rest; the whole output only with output_lines = 0.
"""

from __future__ import annotations

import contextlib
import grp
import gzip
import os
import subprocess
import sys

import pytest
from configobj import ConfigObj

from ivle_sandbox.cluster import env_of

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

MB = 2**20


@pytest.fixture
def master(node_factory):
    return node_factory(users=2, role="master", mount=False, services=False)


def line_bytes(node) -> float:
    node.set_fakes("ivle-buildjail", lines=2000)
    done = subprocess.run([str(node.commands["ivle-buildjail"]), "-u"], env=env_of(node),
                          capture_output=True, check=True)
    return len(done.stdout) / 2000


def rebuild(node) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", "jails", "rebuild"],
                          env=env_of(node), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, check=False)


def logs(node) -> list:
    return sorted(node.maint_log_dir.iterdir(), key=lambda p: p.stat().st_mtime)


def test_a_100_mb_jail_build_leaves_a_bounded_log(master):
    lines = round(100 * MB / line_bytes(master))
    master.set_fakes("ivle-buildjail", lines=lines)
    done = rebuild(master)
    assert done.returncode == 0, done.stderr
    log = logs(master)[-1]
    text = log.read_text()
    print(f"log after 100 MB of output: {log.stat().st_size} bytes")
    assert log.stat().st_size < 200_000, f"{log} is {log.stat().st_size} bytes"
    kept = [line for line in text.splitlines() if " ivle-buildjail: " in line]
    assert len(kept) == 2 * 100 + 1  # the default [logs] output_lines, and the count
    assert any("lines (" in line and "left out" in line for line in kept)
    assert "I: Updating jail" in kept[0] and "I: Syncing" in kept[-1]  # head and tail kept
    st = os.stat(log)
    assert st.st_mode & 0o777 == 0o640
    with contextlib.suppress(KeyError):  # Debian has the adm group; other hosts may not
        assert st.st_gid == grp.getgrnam("adm").gr_gid and st.st_uid == 0


def test_output_lines_zero_keeps_the_whole_output(master):
    conf = ConfigObj(str(master.maint_conf))
    conf.setdefault("logs", {})["output_lines"] = "0"
    conf.write()
    master.set_fakes("ivle-buildjail", lines=3000)
    assert rebuild(master).returncode == 0
    text = logs(master)[-1].read_text()
    assert text.count(" ivle-buildjail: ") > 3000 and "left out" not in text


def test_only_the_newest_logs_are_kept_and_older_ones_compressed(master):
    conf = ConfigObj(str(master.maint_conf))
    conf.setdefault("logs", {})["keep"] = "3"
    conf.write()
    master.set_fakes("ivle-buildjail", lines=10)
    for _ in range(5):
        assert rebuild(master).returncode == 0
    found = logs(master)
    assert len(found) == 3, found
    assert [p.name.endswith(".gz") for p in found] == [True, False, False]
    with gzip.open(found[0], "rt") as handle:
        assert "ivle-buildjail" in handle.read()
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in found)
