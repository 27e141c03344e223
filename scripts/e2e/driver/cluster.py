"""The cluster scenario: a master and three slaves, each a machine of its own."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .config import (
    CONF_DIR,
    CONSOLE_USERS,
    E2E,
    ENV,
    IVLE_CONF,
    IVLE_CONF_TEXT,
    MAINT_DIRS,
    MIGRATIONS_NEW,
    NEW,
    OLD,
    SERVICES_LOG,
    SHARE,
    SRC,
    TEMPLATE,
    USERS,
)
from .harness import Failed, check, run, title, write
from .node import (
    Event,
    console_pids,
    create_database,
    dpkg_status,
    events_since,
    home_checksums,
    http_get,
    install_ivle_maint,
    install_old_ivle,
    ivle_conf_media_version,
    jail_mounts,
    load_old_schema,
    marker_rows,
    prepare_chroot,
    publish,
    query,
    service_running,
    start_consoles,
    write_homes,
)

# -- the cluster: a master and three slaves, each a machine of its own ---------------
#
# Each node is its own overlay of the tree at /srv/nodes/NAME (scripts/e2e/run
# mounts them) with its own mount and PID namespaces, entered with nsenter:
# its ivle-maint sees only its own processes, mounts and files, as on a
# separate machine.  They share this network namespace: the slaves reach the
# master's PostgreSQL on 127.0.0.1:5432, each web server has a port of its own.
# And they share the master's jail tree, as IVLE's data directory is shared
# over NFS on a real site: the master's /var/lib/ivle/jails is bind-mounted
# on each slave's before the nodes start (share_jail_tree).  Only the master
# builds the template and the users' jails; a slave mounts them from there.

NODES_DIR = Path("/srv/nodes")
CLUSTER_NODES = {"master": 0, "slave1": 8081, "slave2": 8082, "slave3": 8083}
CLUSTER_CONF_TEXT = """\
# ivle-maint settings of a cluster node in the end-to-end test.
[node]
role = {role}
name = {name}

[services]
timeout = 20

[consoles]
term_timeout = 2

[cluster]
poll = 0.2
master_timeout = 300
slaves_timeout = 300
"""


@dataclass
class Machine:
    """One cluster node: its root and the PID 1 of its namespaces."""

    name: str
    init: subprocess.Popen[bytes]
    pid: int  # the node's PID 1, as this namespace numbers it

    @property
    def role(self) -> str:
        return "master" if self.name == "master" else "slave"

    @property
    def root(self) -> Path:
        return NODES_DIR / self.name

    def argv(self, *argv: str) -> list[str]:
        """argv run on this node: its namespaces, its root, its mount-namespace token."""
        here, there = (os.stat(f"/proc/{pid}/ns/mnt").st_ino for pid in ("self", self.pid))
        token = f"{here}:{there}"
        # --wd without a value: the target's own directory (/ of the node);
        # --wd=/ would be this process's root, outside the node.
        return ["nsenter", "-t", str(self.pid), "--mount", "--pid", "--root", "--wd",
                "/usr/bin/env", f"IVLE_SANDBOX_MNTNS={token}", *argv]

    def inside(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """/srv/e2e/inside.py node ARGS on this node; its lines shown with the node's name."""
        print(f"[{self.name}] inside.py node {' '.join(args)}", flush=True)
        done = subprocess.run(self.argv("/usr/bin/python3", "-u", str(E2E / "inside.py"),
                                        "node", *args),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
        for line in done.stdout.splitlines():
            print(f"[{self.name}] {line}", flush=True)
        return done


def start_machine(name: str) -> Machine:
    """Give /srv/nodes/NAME /dev, /sys and the test files, then its own PID 1."""
    root = NODES_DIR / name
    subprocess.run(["mount", "--rbind", "/dev", str(root / "dev")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm",
                    str(root / "dev/shm")], check=True)
    subprocess.run(["mount", "--rbind", "/sys", str(root / "sys")], check=True)
    shutil.copytree(E2E, root / "srv/e2e", ignore=shutil.ignore_patterns("repo"),
                    dirs_exist_ok=True)
    init = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
         "--mount-proc", f"--root={root}", "/usr/bin/python3", "-u", str(E2E / "inside.py"),
         "node-init"], stdin=subprocess.DEVNULL)
    children = Path(f"/proc/{init.pid}/task/{init.pid}/children")
    deadline = time.monotonic() + 10
    # Until unshare's child runs inside.py, that is after the chroot.
    while not ((kids := children.read_text().split())
               and b"node-init" in Path(f"/proc/{kids[0]}/cmdline").read_bytes()):
        if time.monotonic() > deadline:
            raise Failed(f"{name}: its PID 1 did not start")
        time.sleep(0.05)
    pid = int(kids[0])
    print(f"node {name}: PID 1 is {pid} here", flush=True)
    return Machine(name, init, pid)


def node_init() -> int:
    """PID 1 of a cluster node: reap orphans (daemons, killed consoles) until killed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.2)


def share_jail_tree(slaves: list[str]) -> None:
    """The master's jails/ on every slave's (the NFS export), before any node runs."""
    master = NODES_DIR / "master" / SRC.relative_to("/")
    master.mkdir(parents=True, exist_ok=True)
    for name in slaves:
        target = NODES_DIR / name / SRC.relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(master), str(target)], check=True)
    print(f"the slaves {', '.join(slaves)} share the master's {SRC}", flush=True)


def setup_cluster_node(role: str, name: str, web_port: int) -> None:
    """This node at 1.0: ivle-maint, the settings, ivle 1.0, then its role's part."""
    prepare_chroot()
    install_ivle_maint()
    title(f"set up {name} ({role}) at {OLD}")
    # [cluster] is the last section: where this slave's web server answers,
    # for the master's check before it migrates.
    probe = f"probe_url = http://127.0.0.1:{web_port}/\n" if role != "master" else ""
    write(CONF_DIR / "ivle-maint.conf", CLUSTER_CONF_TEXT.format(role=role, name=name) + probe)
    write(IVLE_CONF, IVLE_CONF_TEXT, 0o640)
    if role == "master":
        create_database()
    else:
        write(Path("/etc/default/apache2"), f"PORT={web_port}\n")
        # dh_installinit starts usrmgt on every node; the nodes share one
        # network namespace, so a slave's must not take the master's port.
        write(Path("/etc/default/ivle-usrmgt-server"), f"PORT={web_port + 1000}\n")
    # Installed with the database there: the fresh install records the
    # baseline (master) and registers the node in the cluster table.
    install_old_ivle()
    if role == "master":  # the jail tree is the master's; the slaves share it
        load_old_schema(USERS)
        run("ivle-buildjail", show=False)
        write_homes(USERS)
        run("ivle-remakeuser", "-a")
        run("invoke-rc.d", "ivle-usrmgt-server", "start")
        check(service_running("ivle-usrmgt-server"), "user management server runs")
    else:
        check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == OLD,
              "the master's jail template is here (shared tree)")
        run("ivle-mountallusers")
        run("invoke-rc.d", "apache2", "start")
        start_consoles()
        check(service_running("apache2") and http_get(web_port) == "apache2",
              f"web server runs and answers on :{web_port}")
        check(len(console_pids()) == len(CONSOLE_USERS),
              f"{len(CONSOLE_USERS)} consoles run in their jails", console_pids())
        check(len(jail_mounts()) == 3 * len(USERS), f"{len(USERS)} jails mounted", jail_mounts())
    (E2E / "homes.json").write_text(json.dumps(home_checksums(USERS)))
    publish(f"ivle_{NEW}_all.deb")  # apt-get update runs with the upgrade


def check_cluster_node(role: str, name: str, web_port: int) -> None:
    """Every step of IVLE's upgrade procedure of this node's role, after the cluster's upgrade."""
    title(f"check {name} ({role}) after the upgrade")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == NEW,
          f"ivle {NEW} is installed and configured", f"{status} {version}")
    events = events_since(datetime.min.replace(tzinfo=UTC))
    print("    service events: " + ", ".join(f"{e.service} {e.what}" for e in events))
    homes = json.loads((E2E / "homes.json").read_text())
    check(home_checksums(USERS) == homes, f"all {len(homes)} home entries intact")
    new_applied = {k: a for k, (m, a) in marker_rows().items() if k in MIGRATIONS_NEW}
    check(len(new_applied) == len(MIGRATIONS_NEW), "the new migrations are in the marker")
    migrated = max(new_applied.values())
    if role == "master":
        usrmgt = [e for e in events if e.service == "ivle-usrmgt-server"]
        check([e.what for e in usrmgt] == ["start", "stop", "start"],
              "user management server restarted by the upgrade", [e.what for e in usrmgt])
        check(usrmgt[1].when > migrated, "after the migrations")
        check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == NEW,
              f"jail template rebuilt with {NEW}")
        remade = [login for login, _u, _a in USERS
                  if f"version = {NEW}" in (SRC / login / "home/.ivle/jail.conf").read_text()]
        check(len(remade) == len(USERS), f"every user's jail remade for {NEW}", remade)
        return
    web = [e for e in events if e.service == "apache2"]
    check([e.what for e in web] == ["start", "stop", "start"],
          "web server stopped once and started once by the upgrade", [e.what for e in web])
    code = datetime.fromtimestamp((SHARE / "VERSION").stat().st_ctime, UTC)
    check(web[1].when < code < web[2].when, "new code unpacked while the web server was down")
    check(web[2].when > migrated,
          "web server back on the new code only after the master's migrations",
          f"start {web[2].when}, migrations {migrated}")
    check(service_running("apache2") and http_get(web_port) == "apache2",
          f"web server answers on :{web_port}")
    check(not console_pids(), "no python-console process left", console_pids())
    check(not jail_mounts(), "no jail mounted", jail_mounts())
    print(f"MEDIA {ivle_conf_media_version()}", flush=True)


def node_command(action: str, role: str, name: str, port: str) -> int:
    """inside.py node ACTION ROLE NAME PORT: one cluster node's part, run on it."""
    try:
        if action == "setup":
            setup_cluster_node(role, name, int(port))
        elif action == "check":
            check_cluster_node(role, name, int(port))
        else:
            raise Failed(f"unknown node action {action}")
    except (Failed, subprocess.SubprocessError, OSError) as exc:
        print(f"FAIL {exc}", flush=True)
        return 1
    return 0


def node_events(m: Machine, service: str) -> list[Event]:
    """The node's services.log: (time, service, start|stop ...) of SERVICE."""
    log = m.root / SERVICES_LOG.relative_to("/")
    found = []
    for line in log.read_text().splitlines():
        stamp, name, what = line.split(" ", 2)
        if name == service:
            when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            found.append(Event(when, name, what.split(" pid=")[0]))
    return found


def step_times(m: Machine) -> dict[str, tuple[datetime, datetime]]:
    """step -> (started, finished) from the node's journal of the upgrade to NEW."""
    path = m.root / MAINT_DIRS["state"].relative_to("/") / "journal" / f"{OLD}_to_{NEW}.json"
    steps = json.loads(path.read_text())["steps"]
    return {name: (datetime.fromtimestamp(rec["started"], UTC),
                   datetime.fromtimestamp(rec["finished"] or 0, UTC))
            for name, rec in steps.items()}


def check_slaves_after_master(machines: list[Machine]) -> None:
    """From the logs: no slave's web server started on the new code before the
    master's user jails were rebuilt and its usrmgt restarted; and the master
    rebuilt the shared tree only after every slave had unmounted its jails."""
    master, slaves = machines[0], machines[1:]
    steps = step_times(master)
    # When ivle-buildjail rewrote the template (its step began earlier: the
    # wait for the slaves is part of it): the change time of a file it
    # rewrote, which nothing can set back.
    version = master.root / TEMPLATE.relative_to("/") / "usr/lib/ivle/VERSION"
    rebuilt = datetime.fromtimestamp(version.stat().st_ctime, UTC)
    usrmgt = [e for e in node_events(master, "ivle-usrmgt-server") if e.what == "start"]
    done = max(steps["remake-users"][1], steps["restart-usrmgt"][1], usrmgt[-1].when)
    print(f"    master: jail rebuilt {rebuilt:%H:%M:%S.%f}, user jails "
          f"{steps['remake-users'][1]:%H:%M:%S.%f}, usrmgt up {usrmgt[-1].when:%H:%M:%S.%f}")
    for m in slaves:
        start = [e for e in node_events(m, "apache2") if e.what == "start"][-1].when
        print(f"    {m.name}: web server started {start:%H:%M:%S.%f}")
        check(start > done, f"{m.name}'s web server started after the master's user jails and "
              "usrmgt restart", f"{start} <= {done}")
        unmounted = step_times(m)["unmount-jails"][1]
        check(rebuilt > unmounted,
              f"the master rebuilt the shared jail tree after {m.name} unmounted its jails",
              f"{rebuilt} <= {unmounted}")


def scenario_cluster() -> None:
    """One master, three slaves: apt-get upgrade on all four at once, in a random order."""
    title("four machines: master, slave1, slave2, slave3, one jail tree (the master's)")
    share_jail_tree([name for name in CLUSTER_NODES if name != "master"])
    machines = [start_machine(name) for name in CLUSTER_NODES]
    try:
        for m in machines:  # the master first: the slaves use its database
            done = m.inside("setup", m.role, m.name, str(CLUSTER_NODES[m.name]))
            check(done.returncode == 0, f"{m.name} set up at {OLD}")
        master = machines[0]
        status = run(*master.argv("ivle-maint", "cluster", "status"))
        check(all(m.name in status.stdout for m in machines), "every node is registered")

        seed = int(os.environ["IVLE_MAINT_E2E_SEED"])  # chosen by scripts/e2e/run
        rng = random.Random(seed)
        order = rng.sample(machines, len(machines))
        spread = rng.choice([0.0, 3.0])  # all at once, or up to 3 s apart
        title(f"apt-get upgrade on every node at once, started in the order "
              f"{', '.join(m.name for m in order)}, "
              f"{'no pause' if not spread else f'pauses up to {spread:g}s'} (seed {seed})")
        upgrades = []
        for m in order:
            argv = m.argv("/bin/sh", "-c", "apt-get update -q && apt-get upgrade -y -q")
            log = (m.root / "srv/e2e/upgrade.log").open("w")
            upgrades.append((m, log, subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=ENV)))
            time.sleep(rng.uniform(0, spread))
        for m, log, proc in upgrades:
            code = proc.wait(timeout=400)
            log.close()
            for line in (m.root / "srv/e2e/upgrade.log").read_text().splitlines():
                if not line.startswith("(Reading database"):
                    print(f"[{m.name}] | {line}", flush=True)
            check(code == 0, f"{m.name}: apt-get upgrade succeeded", code)

        media = set()
        for m in machines:
            done = m.inside("check", m.role, m.name, str(CLUSTER_NODES[m.name]))
            check(done.returncode == 0, f"{m.name}: every step of its role checked")
            media |= {line.split()[1] for line in done.stdout.splitlines()
                      if line.startswith("MEDIA ")}
        check_slaves_after_master(machines)
        check(len(media) == 1 and OLD not in media,
              f"one new media version on every slave: {', '.join(sorted(media))}")
        rows = query("SELECT key, count(*) FROM ivle_maint_migrations "
                     "WHERE mode <> 'baseline' GROUP BY key")
        check(sorted(str(k) for k, _n in rows) == sorted(MIGRATIONS_NEW)
              and all(n == 1 for _k, n in rows), "the schema migrated once", rows)
        done = run(*master.argv("ivle-maint", "cluster", "status", "--expect", NEW), ok=False)
        check(done.returncode == 0, f"ivle-maint cluster status --expect {NEW}: all nodes up")
    finally:
        for m in machines:  # the node's PID 1 exits on SIGTERM, ending its namespace
            os.kill(m.pid, signal.SIGTERM)
            try:
                m.init.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(m.pid, signal.SIGKILL)
                m.init.wait(timeout=10)
