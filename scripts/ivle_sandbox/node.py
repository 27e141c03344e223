"""A complete throwaway IVLE node under one directory.

    node = build_node(root, pg=pg, users=5, consoles=2)
    ...                                   # node.ivle_conf, node.jail("user0001")
    node.teardown()                       # processes, mounts, database, files

Mounting needs root and a private mount namespace (mountns.require_private
refuses otherwise).  A crash of the owner is covered by a reaper process.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ivle_sandbox import confs, jailtree, mountns, procs, schema
from ivle_sandbox.jailtree import FAKES
from ivle_sandbox.postgres import ThrowawayPostgres, free_port
from ivle_sandbox.reaper import Reaper
from ivle_sandbox.schema import User

SERVICES = {"master": ["ivle-usrmgt-server"], "slave": ["apache2"]}
APACHE_DIRS = ("conf-available", "conf-enabled", "sites-available", "sites-enabled")
SERVICES["both"] = SERVICES["slave"] + SERVICES["master"]
FAKE_COMMANDS = ("ivle-mountallusers", "ivle-buildjail", "ivle-remakeuser")

_INITD = """\
#!/bin/sh
# Sandbox stand-in for /etc/init.d/{name}; see {fakes}/initd-service.
exec /usr/bin/python3 {script} --root {root} --port {port} {name} "$@"
"""


class Node:
    """Paths and handles of one sandbox node.  build_node() makes it real."""

    def __init__(self, root: Path, *, pg: ThrowawayPostgres, dbname: str, role: str,
                 version: str, media_version: str | None) -> None:
        self.root = Path(root).resolve()
        self.pg, self.dbname, self.role = pg, dbname, role
        self.version, self.media_version = version, media_version
        r = self.root
        self.conf_dir = r / "etc" / "ivle"
        self.ivle_conf = self.conf_dir / "ivle.conf"
        self.maint_conf = self.conf_dir / "ivle-maint.conf"
        self.fakes_conf = self.conf_dir / "fakes.conf"
        self.prefix = r / "usr"
        self.data = r / "var" / "lib" / "ivle"
        self.share = self.prefix / "share" / "ivle"
        self.lib = self.prefix / "lib" / "ivle"
        self.jails_src = self.data / "jails"
        self.jail_mounts = self.data / "jailmounts"
        self.template = self.jails_src / "__base__"
        self.template_build = self.jails_src / "__base_build__"
        self.migrations = self.share / "userdb" / "migrations"
        self.console_script = self.share / "services" / "python-console"
        self.initd = r / "etc" / "init.d"
        self.run_dir = r / "run"
        self.log_dir = r / "var" / "log"
        self.services_log = self.log_dir / "services.log"
        self.state_dir = r / "var" / "lib" / "ivle-maint"
        self.maint_log_dir = self.log_dir / "ivle-maint"
        self.backup_dir = r / "var" / "backups" / "ivle-maint"
        self.maint_run_dir = self.run_dir / "ivle-maint"
        self.fakes = FAKES
        self.commands = {name: FAKES / name for name in FAKE_COMMANDS}
        self.services = list(SERVICES[role])
        self.web_port = free_port()
        self.usrmgt_port = free_port()
        self.usrmgt_magic = secrets.token_hex(16)
        self.users: list[User] = []
        self.env = {"IVLECONF": str(self.conf_dir), "IVLE_MAINT_CONF": str(self.maint_conf)}
        self._reaper: Reaper | None = None
        self._torn_down = False

    def __enter__(self) -> Node:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    # -- users and jails -------------------------------------------------

    def user(self, login: str) -> User:
        return next(u for u in self.users if u.login == login)

    def home(self, login: str) -> Path:
        """The user's files as stored: src/LOGIN/home/LOGIN."""
        return self.jails_src / login / "home" / login

    def jail(self, login: str) -> Path:
        """The user's mounted root: mounts/LOGIN."""
        return self.jail_mounts / login

    def mounts(self) -> list[mountns.Mount]:
        return mountns.mounts_under(self.root)

    def mount_user(self, login: str, *, checked: bool = False) -> None:
        mountns.mount_user_jail(self.template, self.jails_src, self.jail_mounts, login,
                                checked=checked)

    def mount_all(self) -> None:
        mountns.require_private(self.root)
        mounted = {m.mountpoint for m in self.mounts()}
        for user in self.users:
            if str(self.jail(user.login)) not in mounted:
                self.mount_user(user.login, checked=True)

    def unmount_all(self) -> list[str]:
        """Unmount every jail (lazily if busy); what stayed mounted."""
        return mountns.unmount_under(self.jail_mounts)

    def connect(self, user: str | None = None) -> Any:
        """A psycopg2 connection to this node's database (default: as ivle)."""
        return self.pg.connect(self.dbname, user or self.pg.ivle_user)

    def db_users(self) -> list[User]:
        return schema.list_users(self.pg, self.dbname)

    def add_users(self, count: int) -> list[User]:
        """New users in the database with their src jails (not mounted)."""
        added = schema.add_users(self.pg, self.dbname, count)
        for user in added:
            jailtree.make_user_jail(self.jails_src, user.login, user.unixid)
        self.users += added
        return added

    def delete_user(self, login: str) -> None:
        """Remove the user from the database only (jail and mounts stay)."""
        schema.delete_user(self.pg, self.dbname, login)

    # -- installed IVLE --------------------------------------------------

    def installed_version(self) -> str:
        return (self.share / "VERSION").read_text().strip()

    def template_version(self) -> str:
        return (self.template / "usr" / "lib" / "ivle" / "VERSION").read_text().strip()

    def run_fake(self, name: str, *args: str, check: bool = False,
                 user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a stand-in (ivle-buildjail, ...) with this node's IVLECONF."""
        argv = [str(FAKES / name), *args]
        if user is not None:  # e.g. 'nobody', to see the root check
            pw = pwd.getpwnam(user)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                    *argv]
        return subprocess.run(
            argv, env=procs.sandbox_env(self.root, self.env), capture_output=True, text=True,
            check=check, timeout=120,
        )

    def set_fakes(self, program: str, **values: Any) -> None:
        """Control a stand-in: node.set_fakes('ivle-buildjail', fail=True)."""
        confs.update_fakes_conf(self.fakes_conf, program, values)

    # -- services ----------------------------------------------------------

    def service(self, name: str, action: str) -> subprocess.CompletedProcess[str]:
        """Run /etc/init.d/NAME ACTION of this node."""
        return subprocess.run(
            [str(self.initd / name), action], capture_output=True, text=True, timeout=60,
            check=False,
        )

    def service_running(self, name: str) -> bool:
        return self.service(name, "status").returncode == 0

    def start_services(self) -> None:
        for name in self.services:
            result = self.service(name, "start")
            if result.returncode != 0:
                raise mountns.SandboxError(f"{name} start: {result.stderr.strip()}")

    def stop_services(self) -> None:
        for name in self.services:
            self.service(name, "stop")

    def service_events(self, name: str | None = None) -> list[tuple[str, str, str]]:
        """(UTC time, service, event) from services.log, oldest first; event is
        'start', 'stop', 'start FAILED' or 'stop FAILED'."""
        if not self.services_log.exists():
            return []
        events = []
        for line in self.services_log.read_text().splitlines():
            stamp, service, *words = line.split()
            event = words[0] + (" FAILED" if "FAILED" in words else "")
            if name is None or service == name:
                events.append((stamp, service, event))
        return events

    # -- consoles ----------------------------------------------------------

    def start_consoles(self, count: int | None = None, *, logins: Sequence[str] | None = None,
                       chroot: bool = False) -> list[int]:
        """Start console processes as IVLE does; their pids.

        Each runs as the user's uid with its cwd in the mounted home (and,
        with chroot=True, its root directory at mounts/LOGIN).
        """
        if logins is None:
            logins = [u.login for u in self.users[: count if count is not None else 1]]
        specs = []
        for login in logins:
            user = self.user(login)
            argv = ["/usr/bin/python", str(self.console_script), str(free_port()),
                    secrets.token_hex(8)]
            spec: dict[str, Any] = {"argv": argv, "executable": "/usr/bin/python3"}
            if chroot:
                extra = {"IVLE_CONSOLE_CHROOT": str(self.jail(login)),
                         "IVLE_CONSOLE_CWD": f"/home/{login}",
                         "IVLE_CONSOLE_UID": str(user.unixid)}
                spec.update(cwd="/", env=procs.sandbox_env(self.root, extra))
            else:
                spec.update(cwd=str(self.jail(login) / "home" / login), uid=user.unixid,
                            gid=user.unixid, env=procs.sandbox_env(self.root))
            specs.append(spec)
        pids = procs.spawn_detached(specs)
        # Ready means listening: after the chroot and the drop to the uid.
        late = procs.wait_listening([int(s["argv"][2]) for s in specs], 10.0)
        if late:
            raise mountns.SandboxError(f"consoles on ports {late} did not start")
        return pids

    def console_pids(self) -> list[int]:
        """Live processes whose command line is this node's python-console."""
        script = str(self.console_script)
        return [
            pid
            for pid in procs.all_pids()
            if procs.cmdline(pid)[:2] == ["/usr/bin/python", script] and procs.alive(pid)
        ]

    def stop_consoles(self) -> None:
        procs.kill_all(self.console_pids())

    # -- teardown ----------------------------------------------------------

    def teardown(self, *, remove: bool = True) -> None:
        """Kill sandbox processes, unmount (deepest first), drop the database,
        remove the tree (unless remove=False).  Safe to call twice."""
        if self._torn_down:
            return
        self._torn_down = True
        left = procs.kill_all(procs.marked(self.root) + self.console_pids())
        stuck = mountns.unmount_under(self.root)
        with contextlib.suppress(Exception):  # the server may already be gone
            schema.drop_database(self.pg, self.dbname)
        if remove and self.root.exists():
            mountns.remove_tree(self.root)
        if self._reaper is not None:
            self._reaper.disarm()
        if left or stuck:
            raise mountns.SandboxError(f"teardown: processes {left}, mounts {stuck} remained")


def install_version(node: Node, version: str,
                    migrations: Mapping[str, str] | None = None) -> None:
    """Simulate installing IVLE VERSION: code, VERSION files, migrations.

    The jail template is not touched: that is ivle-buildjail's job.
    """
    jailtree.install_code(node.share, node.lib, node.migrations, version, migrations)
    node.version = version


def _write_initd(node: Node) -> None:
    node.initd.mkdir(parents=True, exist_ok=True)
    ports = {"apache2": node.web_port, "ivle-usrmgt-server": node.usrmgt_port}
    for name in node.services:
        script = node.initd / name
        script.write_text(
            _INITD.format(name=name, fakes=FAKES, script=shlex.quote(str(FAKES / "initd-service")),
                          root=shlex.quote(str(node.root)), port=ports[name])
        )
        script.chmod(0o755)


def build_node(root: Path, *, pg: ThrowawayPostgres, users: int = 5, version: str = "1.0",
               role: str = "both", media_version: str | None = "1.0", mount: bool = True,
               services: bool = True, consoles: int = 0, dbname: str | None = None) -> Node:
    """Create a node in root (empty or absent); see the module docstring."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # consoles run as students and must reach their homes
    if mount:
        mountns.require_private(root)
    dbname = dbname or f"ivle_{root.name.lower().replace('-', '_')}"[:63]
    node = Node(root, pg=pg, dbname=dbname, role=role, version=version,
                media_version=media_version)
    node._reaper = Reaper(node.root, remove=[node.root])
    try:
        _populate(node, users=users, mount=mount, services=services, consoles=consoles)
    except BaseException:
        node.teardown()
        raise
    return node


def _populate(node: Node, *, users: int, mount: bool, services: bool, consoles: int) -> None:
    for path in (node.conf_dir, node.run_dir, node.log_dir, node.state_dir, node.maint_log_dir,
                 node.backup_dir, node.jails_src, node.jail_mounts,
                 *(node.root / "etc" / "apache2" / d for d in APACHE_DIRS)):
        path.mkdir(parents=True, exist_ok=True)
    node.users = schema.create_database(node.pg, node.dbname, users)
    db = {"port": node.pg.port, "name": node.dbname, "username": node.pg.ivle_user,
          "password": node.pg.ivle_password}
    confs.write_ivle_conf(node.ivle_conf, root=node.root, media_version=node.media_version,
                          db=db, usrmgt_port=node.usrmgt_port,
                          usrmgt_magic=node.usrmgt_magic)
    confs.write_maint_conf(node.maint_conf, root=node.root, role=node.role,
                           migrations=node.migrations, fakes=FAKES,
                           socket_dir=node.pg.socket_dir)
    install_version(node, node.version)
    jailtree.make_template(node.template_build, node.lib)
    # The template as a completed ivle-buildjail leaves it: a copy with the
    # same modes and mtimes.  Writing it a second time could straddle a
    # second boundary, and the jail step's check compares whole seconds.
    shutil.copytree(node.template_build, node.template, symlinks=True)
    for user in node.users:
        jailtree.make_user_jail(node.jails_src, user.login, user.unixid)
    _write_initd(node)
    if mount:
        node.mount_all()
    if services:
        node.start_services()
    if consoles:
        node.start_consoles(consoles)


def console_owner(pid: int) -> tuple[int, str, str]:
    """(uid, cwd, root) of a process, for checks on consoles."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    return uid, os.readlink(f"/proc/{pid}/cwd"), os.readlink(f"/proc/{pid}/root")
