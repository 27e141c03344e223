"""Fault injection in a CODE-ONLY rollback's way through dpkg: `ivle-maint
rollback` installs the kept 1.0 .deb (an additive 1.1 rolled back) with
`dpkg -i`, and is killed (SIGKILL, SIGTERM, SIGINT) at each point of
dpkg's run: the package marked half-installed before 1.0's preinst, the
preinst done with the code still 1.1's, 1.0 unpacked before its postinst,
1.0's postinst half-way.  Then the person runs `ivle-maint rollback` again
(and the one command it names, if any).  Whatever the point, the node ends
as an uninterrupted rollback leaves it: 1.0 installed and configured, the
journal complete, the point used; no command needs a repository (1.0 may
be gone from it: that is why the package was kept).

dpkg here is a stand-in (tmpfs over /usr/local/sbin, first on the PATH
ivle-maint gives a child, in this run's private mount namespace): it
keeps dpkg's record of the package in a file, as dpkg's states go, runs
the node's hooks as 1.0's maintainer scripts would, and at the point named
in the marker file signals the ivle-maint that ran it, once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint.config import load_settings
from ivle_maint.rollback import point as points
from ivle_maint.rollback.old_package import KeptPackage
from ivle_sandbox import mountns
from support.private_dpkg import build_deb
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    final_state,
    journal,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

OLD, NEW = "1.0", "1.1"
FAKES = Path("/usr/local/sbin")
SCRIPTS = REPO / "scripts"

# dpkg -i DEB / dpkg --configure -a, for the package ivle only.
DPKG = """\
#!/usr/bin/python3
import json, os, signal, subprocess, sys, time
sys.path.insert(0, {scripts!r})
from ivle_sandbox.fakeapt import unpack
STATE, MARKER, ROOT = {state!r}, {marker!r}, {root!r}

def record(status, version, old=None):
    data = json.load(open(STATE))
    data.update(status=status, version=version, **({{"old": old}} if old else {{}}))
    json.dump(data, open(STATE, "w"))

def point(name):
    if os.path.exists(MARKER) and open(MARKER).read().split()[0] == name:
        sig = getattr(signal, open(MARKER).read().split()[1])
        os.unlink(MARKER)  # once: the rerun is not killed
        os.kill(os.getppid(), sig)
        time.sleep(60)  # ended with ivle-maint (its parent-death signal, or its unwinding)
        sys.exit(1)

def hook(*args):
    env = {{**os.environ, "DPKG_MAINTSCRIPT_PACKAGE": "ivle", "PYTHONPATH": {repo!r}}}
    done = subprocess.run([sys.executable, "-m", "ivle_maint", "hook", *args], env=env)
    if done.returncode:
        print(f"dpkg: error processing package ivle ({{args[0]}})", file=sys.stderr)
        sys.exit(1)

def configure():
    data = json.load(open(STATE))
    hook("--package-version", data["version"], "postinst", "configure", data["old"])
    record("installed", data["version"])

args = sys.argv[1:]
if args == ["--configure", "-a"]:
    if json.load(open(STATE))["status"] in ("unpacked", "half-configured"):
        configure()
    sys.exit(0)
assert args[0] == "-i" and len(args) == 2, args
old = json.load(open(STATE))["version"]
record("half-installed", old)  # before the new preinst, as dpkg does
point("preinst")
hook("preinst", "upgrade", old, {OLD!r})
point("unpack")
unpack(__import__("pathlib").Path(ROOT), {OLD!r})
record("half-configured", {OLD!r}, old)
point("postinst")
configure()
"""
DPKG_QUERY = """\
#!/usr/bin/python3
import json, sys
data = json.load(open({state!r}))
args = sys.argv[1:]
fmt = next((a.split("=", 1)[1] for a in args if a.startswith("-f=")), None)
if args[:1] != ["-W"] or fmt is None or args[-1] != "ivle":
    print(f"dpkg-query: package '{{args[-1]}}' is not installed", file=sys.stderr)
    sys.exit(1)
flag = "reinstreq" if data["status"] == "half-installed" else "ok"
status = f"install {{flag}} {{data['status']}}"
print(fmt.replace("${{Status}}", status).replace("${{Version}}", data["version"])
      .replace("\\\\t", "\\t"), end="")
"""


@pytest.fixture
def stand_in_dpkg(tmp_path: Path) -> Iterator[Path]:
    mountns.require_private(FAKES)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(FAKES)], check=True)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(FAKES)], check=True)


def install_stand_ins(node: Any, work: Path) -> tuple[Path, Path]:
    state, marker = work / "dpkg-state.json", work / "kill-at"
    state.write_text(json.dumps({"status": "installed", "version": NEW, "old": OLD}))
    values = {"state": str(state), "marker": str(marker), "root": str(node.root),
              "scripts": str(SCRIPTS), "OLD": OLD, "repo": str(REPO)}
    for name, text in (("dpkg", DPKG), ("dpkg-query", DPKG_QUERY)):
        (FAKES / name).write_text(text.format(**values))
        (FAKES / name).chmod(0o755)
    return state, marker


def keep_a_package(node: Any, work: Path) -> None:
    """The point keeps a real 1.0 .deb, as the upgrade's preinst keeps one."""
    deb = build_deb(work, "ivle", OLD, {"usr/share/doc/ivle/README": b"IVLE 1.0\n"})
    kept = KeptPackage("ivle", OLD, "all", deb, hashlib.sha256(deb.read_bytes()).hexdigest(),
                       False)
    settings = load_settings(str(node.maint_conf))
    point = points.latest_pinned(settings)
    assert point is not None
    point.update(lambda p: (setattr(p, "package", kept.to_json()),
                            setattr(p, "package_name", "ivle")))


def upgraded(node_factory: Any, work: Path) -> Any:
    node = at_version_1_0(node_factory(users=3, consoles=0, role="both"))
    assert cli(node, "hook", "preinst", "upgrade", OLD, NEW).returncode == 0
    unpack(node, NEW)
    done = cli(node, "hook", "--package-version", NEW, "postinst", "configure", OLD)
    assert done.returncode == 0, done.stderr
    keep_a_package(node, work)
    return node


def resumed(node: Any, said: str) -> subprocess.CompletedProcess[str]:
    """The command a failed run names, as a person pastes it (none needs a repository)."""
    line = next((ln for ln in said.splitlines() if "resume" in ln.lower() or "run:" in ln), "")
    assert "apt-get" not in said, said  # the kept package is on this node
    assert "dpkg --configure -a" in line or "ivle-maint" in line, said
    if "dpkg --configure -a" in line:
        env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
        return subprocess.run(["dpkg", "--configure", "-a"], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)
    command = re.search(r"ivle-maint (rerun|rollback)", line)
    assert command, said
    return cli(node, command.group(1))


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
@pytest.mark.parametrize("where", ["preinst", "unpack", "postinst"])
def test_a_code_only_rollback_killed_anywhere_in_dpkg_is_finished_by_running_it_again(
        node_factory: Any, stand_in_dpkg: Path, where: str, sig: str) -> None:
    node = upgraded(node_factory, stand_in_dpkg)
    state, marker = install_stand_ins(node, stand_in_dpkg)
    marker.write_text(f"{where} {sig}")
    proc = start_cli(node, "rollback")
    _out, err = proc.communicate(timeout=300)
    assert not marker.exists(), f"never reached {where}: {err}"
    assert proc.returncode != 0, err

    again = cli(node, "rollback")
    if again.returncode != 0:
        again = resumed(node, again.stderr)
    assert again.returncode == 0, again.stderr
    recorded = json.loads(state.read_text())
    assert (recorded["status"], recorded["version"]) == ("installed", OLD), again.stderr
    assert journal(node, NEW, OLD)["state"] == "complete"
    end = final_state(node)
    assert end["installed"] == OLD and end["template"] == OLD
    assert node.service_running("apache2")
    assert "restore point" not in cli(node, "status").stdout  # used: not pinned any more
    assert cli(node, "rerun").returncode == 0  # nothing left unfinished


def test_a_rerun_after_a_kill_in_the_unpack_names_the_rollback_not_the_repository(
        node_factory: Any, stand_in_dpkg: Path) -> None:
    """`ivle-maint rerun` of that rollback: before, it named `apt-get install
    ivle=1.0`, which needs the version the repository may have dropped."""
    node = upgraded(node_factory, stand_in_dpkg)
    state, marker = install_stand_ins(node, stand_in_dpkg)
    marker.write_text("unpack SIGKILL")
    proc = start_cli(node, "rollback")
    proc.communicate(timeout=300)
    assert not marker.exists()
    rerun = cli(node, "rerun")
    assert rerun.returncode == 1, rerun.stderr
    assert "apt-get" not in rerun.stderr and "ivle-maint rollback" in rerun.stderr, rerun.stderr
    again = cli(node, "rollback")
    assert again.returncode == 0, again.stderr
    assert json.loads(state.read_text())["status"] == "installed"
    assert journal(node, NEW, OLD)["state"] == "complete"
