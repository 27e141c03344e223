"""Booted nodes: systemd-nspawn with real systemd as PID 1, from one tree.

Every node boots the cached tree with --volatile=overlay (its writes go to
a tmpfs and vanish), joins a network namespace the test made (so nodes
share a loopback and use distinct ports), and runs without machined:
--register=no --keep-unit, after the launching shell moved itself into
fresh cgroups of both hierarchies (nspawn then uses them, not machined's).  Commands run inside
through nsenter into the guest's PID 1.

`cluster(...)` is the context manager a test uses: on leaving it, however
it is left (SIGTERM included), every node is powered off (SIGTERM, then SIGKILL of its
cgroups), its cgroups and nspawn's propagate directory are removed, the
network namespace is deleted, and `leftovers()` must then be empty.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_ENV = ["PATH=" + HOST_PATH, "HOME=/root", "LANG=C.UTF-8", "LC_ALL=C.UTF-8",
             "DEBIAN_FRONTEND=noninteractive", "TERM=dumb"]
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
CGROUP_PARENT = "ivle-maint-booted"  # every node's cgroups live under this
PROPAGATE = Path("/run/systemd/nspawn/propagate")
NETNS_DIR = Path("/run/netns")
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class NodeError(RuntimeError):
    pass


@dataclass
class Node:
    """One booted node.  `name` is also its hostname and cgroup name."""

    name: str
    tree: Path
    netns: str
    binds_ro: dict[str, str] = field(default_factory=dict)  # host path -> guest path
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    pid1: int = 0

    def cgroups(self) -> list[Path]:
        return [root / CGROUP_PARENT / self.name for root in CGROUP_ROOTS]

    # -- boot and power off ------------------------------------------------------

    def boot(self) -> None:
        for cg in self.cgroups():
            cg.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "-D", str(self.tree), "-M", self.name, "--boot",
                "--register=no", "--keep-unit", "--console=read-only",
                "--volatile=overlay", f"--network-namespace-path={NETNS_DIR / self.netns}",
                # What a server's root may and nspawn forbids by default: the
                # graceful stop's socket copies (pidfd_getfd, outside nspawn's
                # seccomp allow-list) and their filter (CAP_NET_ADMIN).  Without
                # them the stop warns, and over SSH a client met a reset.
                "--capability=CAP_NET_ADMIN", "--system-call-filter=pidfd_getfd",
                *[f"--bind-ro={host}:{guest}" for host, guest in self.binds_ro.items()]]
        # The shell moves itself into the node's cgroups, then becomes nspawn.
        move = " && ".join(f"echo $$ > {cg}/cgroup.procs" for cg in self.cgroups())
        with open(self.log or os.devnull, "ab") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", f'{move} && exec "$@"', "sh", *argv], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})
        self.pid1 = self._wait_pid1()
        self._wait_running()

    def _wait_pid1(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeError(f"{self.name}: systemd-nspawn exited {self.proc.returncode}"
                                f" (log: {self.log})")
            for child in _children(self.proc.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise NodeError(f"{self.name}: no systemd under nspawn after {BOOT_TIMEOUT:.0f}s")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.run("systemctl", "--failed", "--no-legend", check=False)
                    raise NodeError(f"{self.name}: booted degraded: {failed.stdout.strip()}")
                return
            time.sleep(0.1)
        raise NodeError(f"{self.name}: system state {state!r} after {BOOT_TIMEOUT:.0f}s")

    def poweroff(self) -> None:
        """Orderly poweroff (SIGTERM to nspawn); kill what is left; remove cgroups."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_cgroups()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._kill_cgroups()
        for cg in self.cgroups():
            _remove_cgroup_tree(cg)
        with contextlib.suppress(FileNotFoundError):
            (PROPAGATE / self.name).rmdir()

    def _kill_cgroups(self) -> None:
        for cg in self.cgroups():
            for _ in range(50):
                pids = _cgroup_pids(cg)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)

    # -- commands inside ---------------------------------------------------------

    def argv(self, *cmd: str) -> list[str]:
        """argv that runs cmd inside the node (every namespace of its PID 1)."""
        return ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", *GUEST_ENV, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 300,
            input: str | None = None, merge: bool = True) -> subprocess.CompletedProcess[str]:
        """Run cmd inside; stderr merged into .stdout unless merge is False."""
        done = subprocess.run(self.argv(*cmd), input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                              text=True, timeout=timeout,
                              check=False, stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise NodeError(f"{self.name}: {' '.join(cmd)} exited {done.returncode}:\n"
                            f"{done.stdout[-3000:]}{(done.stderr or '')[-3000:]}")
        return done

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("sh", "-c", f'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod {mode} "$1"',
                 "sh", path, input=text)


def _mounted(path: Path) -> bool:
    """Whether path is a mount point (a bind mount of its own file system too)."""
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == str(path) for line in handle)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cgroup_pids(cg: Path) -> list[int]:
    """Every pid in cg and the cgroups below it."""
    pids: list[int] = []
    if not cg.is_dir():
        return pids
    for procs in cg.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup_tree(cg: Path) -> None:
    """rmdir cg's (empty) cgroup directories, deepest first."""
    if not cg.is_dir():
        return
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    for _ in range(50):  # a cgroup is busy for a moment after its last process exits
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise NodeError(f"cgroup {cg} could not be removed")


def leftovers(names: list[str], netns: str) -> list[str]:
    """What a finished cluster left behind: must be [] (mounts, processes, cgroups)."""
    found = []
    for root in CGROUP_ROOTS:
        for name in names:
            if (root / CGROUP_PARENT / name).exists():
                found.append(f"cgroup {root / CGROUP_PARENT / name}")
    for name in names:
        if (PROPAGATE / name).exists():
            found.append(f"directory {PROPAGATE / name}")
    if (NETNS_DIR / netns).exists():
        found.append(f"network namespace {netns}")
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4]
            if any(f"/{name}" in point for name in names) or point.endswith(f"/netns/{netns}"):
                found.append(f"mount {point}")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if cmd.startswith("systemd-nspawn") and any(f" -M {n} " in cmd for n in names):
                    found.append(f"process {entry.name}: {cmd[:80]}")
    return found


def sweep(names: list[str], netns: str) -> None:
    """Remove what an interrupted earlier run of these nodes left (SIGKILLed runner)."""
    for name in names:
        stale = Node(name, Path("/"), netns)
        stale._kill_cgroups()
        for cg in stale.cgroups():
            _remove_cgroup_tree(cg)
        with contextlib.suppress(FileNotFoundError):
            (PROPAGATE / name).rmdir()
    if (NETNS_DIR / netns).exists():
        subprocess.run(["ip", "netns", "delete", netns], check=False)


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (timeout, CI cancel) unwinds like an exception: nodes powered off.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def cluster(tree: Path, names: list[str], netns: str, *, binds_ro: dict[str, str] | None = None,
            log_dir: Path | None = None) -> Iterator[dict[str, Node]]:
    """Boot one node per name in a fresh network namespace; tear all down on exit."""
    nodes: dict[str, Node] = {}
    sweep(names, netns)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: the caller handles signals
        previous = None
    netns_was_mounted = _mounted(NETNS_DIR)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for name in names:
            node = Node(name, tree, netns, dict(binds_ro or {}),
                        log=(log_dir / f"{name}.console") if log_dir else None)
            nodes[name] = node  # registered first: a failed boot is powered off too
            node.boot()
        yield nodes
    finally:
        errors = []
        for node in nodes.values():
            try:
                node.poweroff()
            except Exception as exc:
                errors.append(str(exc))
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        # `ip netns add` bind-mounts /run/netns on itself the first time: undo
        # that too when this cluster made it and no namespace is left in it.
        if not netns_was_mounted and _mounted(NETNS_DIR) and not any(NETNS_DIR.iterdir()):
            subprocess.run(["umount", str(NETNS_DIR)], check=False)
        for parent in (root / CGROUP_PARENT for root in CGROUP_ROOTS):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when no other cluster uses it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if errors:
            raise NodeError("; ".join(errors))
