"""Host-side helpers of the booted-node scenarios: a prepared node, a probe.

`prepared_node(...)` boots one node from the cached tree, joined to a
network namespace made for it, with the apt repositories and scripts/
bind-mounted read-only, and sets it up at IVLE 1.0 (guest.py setup).
`Probe` runs probe.py inside that network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import node as nodes
from . import standin, tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUEST = "/srv/scripts/booted/guest.py"
PROBE_LINE = re.compile(r"client probe: (\d+) requests: (\d+) old, (\d+) maintenance, "
                        r"(\d+) refused, (\d+) errors, (\d+) new; outage (\S+)")


def ivle_maint_deb() -> Path:
    """build/deb/ivle-maint_*_all.deb, made by `make deb` first."""
    built = subprocess.run(["make", "-C", str(REPO), "deb"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, check=False)
    if built.returncode != 0:  # the build's own tests failed: say which
        raise RuntimeError(f"make deb failed:\n{built.stdout[-4000:]}")
    debs = sorted((REPO / "build" / "deb").glob("ivle-maint_*_all.deb"))
    if not debs:
        raise RuntimeError("make deb built no ivle-maint_*_all.deb")
    return debs[-1]


def repositories(work: Path) -> dict[str, Path]:
    return standin.repositories(work / "repos", ivle_maint_deb())


@dataclass
class Ports:
    web: int = 8080
    db: int = 5432
    usrmgt: int = 2178

    def shifted(self, by: int) -> Ports:
        return Ports(self.web + by, self.db + by, self.usrmgt + by)


class Guest:
    """One booted node, set up as an IVLE node."""

    def __init__(self, node: nodes.Node, ports: Ports) -> None:
        self.node, self.ports = node, ports
        host = os.stat("/proc/self/ns/mnt").st_ino
        guest = node.run("stat", "-L", "-c", "%i", "/proc/self/ns/mnt").stdout.strip()
        # The stand-ins mount jails only in a namespace that is not the host's.
        self.sandbox_env = f"IVLE_SANDBOX_MNTNS={host}:{guest}"

    def setup(self, repo: str) -> dict[str, object]:
        host_mntns = self.sandbox_env.split("=")[1].split(":")[0]
        done = self.node.run("python3", GUEST, "setup", host_mntns, str(self.ports.web),
                             str(self.ports.db), str(self.ports.usrmgt), repo,
                             merge=False, check=False)
        if done.returncode != 0:
            raise nodes.NodeError(f"setup failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def setup_cluster(self, role: str, master_db: int) -> None:
        host_mntns = self.sandbox_env.split("=")[1].split(":")[0]
        done = self.node.run("python3", GUEST, "setup-cluster", role, self.node.name, host_mntns,
                             str(self.ports.web), str(master_db), str(self.ports.usrmgt),
                             merge=False, check=False)
        if done.returncode != 0:
            raise nodes.NodeError(f"{self.node.name}: setup failed:\n{done.stdout[-2000:]}"
                                  f"{done.stderr[-4000:]}")

    def run(self, *cmd: str, check: bool = False,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """cmd inside, with the stand-ins' mount-namespace token (as dpkg passes it on)."""
        return self.node.run("env", self.sandbox_env, *cmd, check=check, timeout=timeout)

    def facts(self) -> dict[str, object]:
        return dict(json.loads(self.node.run("python3", GUEST, "facts", merge=False).stdout))


@contextlib.contextmanager
def booted_cluster(names: list[str], repos: dict[str, Path]) -> Iterator[dict[str, Guest]]:
    """names[0] the master, the rest slaves, each set up at 1.0 on the master's database."""
    netns = f"ivle-booted-{os.getpid()}"
    binds = {str(next(iter(repos.values())).parent): "/srv/repos",
             str(REPO / "scripts"): "/srv/scripts"}
    base = Ports()
    with tempfile.TemporaryDirectory(prefix="ivle-booted-logs-") as logs, \
            nodes.cluster(tree.tree(), names, netns, binds_ro=binds, log_dir=Path(logs)) as booted:
        guests = {name: Guest(node, Ports(base.web + i, base.db, base.usrmgt))
                  for i, (name, node) in enumerate(booted.items())}
        for i, guest in enumerate(guests.values()):
            guest.setup_cluster("master" if i == 0 else "slave", base.db)
        yield guests
    left = nodes.leftovers(names, netns)
    if left:
        raise nodes.NodeError(f"left behind: {left}")


@contextlib.contextmanager
def prepared_nodes(names: list[str], repo: str | dict[str, str], repos: dict[str, Path],
                   ports: Ports | None = None) -> Iterator[dict[str, Guest]]:
    """Boot names in one fresh network namespace and set each up at 1.0 (distinct ports).

    repo: the apt repository every node uses, or one per node name.
    """
    netns = f"ivle-booted-{os.getpid()}"
    per_node = repo if isinstance(repo, dict) else dict.fromkeys(names, repo)
    binds = {str(next(iter(repos.values())).parent): "/srv/repos",
             str(REPO / "scripts"): "/srv/scripts"}
    base = ports or Ports()
    with tempfile.TemporaryDirectory(prefix="ivle-booted-logs-") as logs, \
            nodes.cluster(tree.tree(), names, netns, binds_ro=binds, log_dir=Path(logs)) as booted:
        guests = {name: Guest(node, base.shifted(i)) for i, (name, node)
                  in enumerate(booted.items())}
        for name, guest in guests.items():
            guest.setup(per_node[name])
        yield guests
    left = nodes.leftovers(names, netns)
    if left:
        raise nodes.NodeError(f"left behind: {left}")


class Probe:
    """probe.py against a guest's site, inside the guests' network namespace."""

    def __init__(self, guest: Guest, old: str = "1.0", new: str = "1.1",
                 count: int = 3000) -> None:
        self.timeline = tempfile.NamedTemporaryFile(prefix="ivle-probe-", suffix=".json")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", guest.node.netns, "/usr/bin/python3", str(HERE / "probe.py"),
             f"http://127.0.0.1:{guest.ports.web}/", "--old", old, "--new", new,
             "--count", str(count), "--json", self.timeline.name],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "started" not in first:
            raise RuntimeError(f"probe did not start: {first!r}")
        self.line = ""
        self.counts: dict[str, int] = {}
        self.answers: list[list[object]] = []

    def stop(self, wait: bool = False) -> str:
        """Stop (or with wait, let it finish its count), parse and return its one line."""
        if self.proc.poll() is None and not wait:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.line = out.strip().splitlines()[-1]
        print(self.line, flush=True)
        match = PROBE_LINE.fullmatch(self.line)
        if not match:
            raise RuntimeError(f"unexpected probe output {self.line!r}")
        names = ("requests", "old", "maintenance", "refused", "errors", "new")
        self.counts = {n: int(v) for n, v in zip(names, match.groups()[:6], strict=True)}
        data = json.loads(Path(self.timeline.name).read_text())
        self.outage = data["outage"]
        self.answers = data["answers"]
        self.timeline.close()
        return self.line

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.timeline.close()

    def sequence(self) -> list[str]:
        """The classes in order, runs collapsed: e.g. ['old', 'refused', 'new']."""
        seq: list[str] = []
        for _t, what, _detail in self.answers:
            if not seq or seq[-1] != what:
                seq.append(str(what))
        return seq

    def errors(self) -> list[list[object]]:
        return [a for a in self.answers if a[1] == "error"]
