#!/usr/bin/python3
"""The end-to-end scenarios, run inside the throwaway chroot by scripts/e2e/run.

    /srv/e2e/inside.py SCENARIO
    /srv/e2e/inside.py node-init | node ACTION ROLE NAME PORT   (cluster nodes)

SCENARIO: lifecycle, upgrade, failed-migration, failed-preinst, reinstall
or cluster (a master and three slaves, each with its own root, mount and
PID namespaces, sharing the master's jail tree, upgraded by apt-get at
once in a random order; the logs must show no slave's web server started
before the master's user jails and usrmgt restart were done).

It runs as PID 1 of a private PID, mount and network namespace: it reaps
orphans (daemons, killed consoles) so nothing lingers as a zombie, and
when it exits the kernel ends every process left in the namespace.

The chroot is Debian bookworm with PostgreSQL; /srv/e2e holds the
ivle-maint .deb, the stand-in `ivle` packages (pool/), this file and the
sandbox helpers it reuses (ivle_sandbox/, pure Python).  The
chroot owns its /usr/sbin/policy-rc.d (allow everything) and a
/usr/sbin/runlevel that answers "N 2", so invoke-rc.d runs init scripts
for real.  Every check prints "PASS <what>" as it passes; the first
failure prints "FAIL <what>: <detail>" and exits 1.
"""

from __future__ import annotations

import configparser
import difflib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ivle_sandbox.jailtree import user_files as sandbox_user_files

E2E = Path("/srv/e2e")
POOL, REPO = E2E / "pool", E2E / "repo"
CONF_DIR = Path("/etc/ivle")
IVLE_CONF = CONF_DIR / "ivle.conf"
DATA = Path("/var/lib/ivle")
SRC, MOUNTS = DATA / "jails", DATA / "jailmounts"
TEMPLATE = SRC / "__base__"
SHARE = Path("/usr/share/ivle")
MIGRATIONS = SHARE / "userdb" / "migrations"
SERVICES_LOG = Path("/var/log/services.log")
MAINT_DIRS = {
    "state": Path("/var/lib/ivle-maint"),
    "log": Path("/var/log/ivle-maint"),
    "run": Path("/run/ivle-maint"),
}
BACKUPS = Path("/var/backups/ivle-maint")
DB = {"host": "127.0.0.1", "port": 5432, "dbname": "ivle", "user": "ivle",
      "password": "e2e-secret"}
# (login, unixid, admin); ghost's jail stays mounted after it leaves the database.
USERS = [("alice", 5001, True), ("bob", 5002, False), ("carol", 5003, False),
         ("dave", 5004, False), ("erin", 5005, False)]
GHOST = ("ghost", 5099, False)
CONSOLE_USERS = ("alice", "bob", "carol")
OLD, NEW = "1.0", "1.1"
MIGRATIONS_OLD = ("20090101-01", "20090101-02", "20090215")
MIGRATIONS_NEW = ("20100301-01", "20100301-02")
GOOD_FIRST_MIGRATION = """\
BEGIN;
ALTER TABLE login ADD COLUMN theme VARCHAR NOT NULL DEFAULT 'light';
UPDATE login SET theme = 'dark' WHERE admin;
COMMIT;
"""
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    # "host:ours" mount namespaces: the stand-ins then agree to mount.
    "IVLE_SANDBOX_MNTNS": os.environ.get("IVLE_SANDBOX_MNTNS", ""),
}

IVLE_CONF_TEXT = """\
# IVLE configuration of the end-to-end test node.
# Maintained by hand: keep the comments when editing.

[paths]
prefix = /usr
data = /var/lib/ivle
share = ${prefix}/share/ivle
lib = ${prefix}/lib/ivle

    [[jails]]
    # Each user's jail is mounted here while they use the console.
    mounts = ${data}/jailmounts
    src = ${data}/jails
    template = ${src}/__base__
    template_build = ${src}/__base_build__

[media]
# Bump on every upgrade so browsers fetch new media (same on all slaves).
version = 1.0

[database]
host = 127.0.0.1
port = 5432
name = ivle
username = ivle
password = e2e-secret

[usrmgt]
host = 127.0.0.1
port = 2178    # the user management server on the master
magic = 5e2e5e2e5e2e5e2e

[jail]
suite = bookworm
mirror = http://deb.debian.org/debian
devmode = False
"""

MAINT_CONF_TEXT = """\
# ivle-maint settings of the end-to-end test node; the rest is default.
[node]
role = both
name = e2e

[services]
timeout = 20

[consoles]
term_timeout = 2

[jails]
# Run IVLE's own 'ivle-mountallusers -u' too, as IVLE's upgrade procedure does.
run_mountallusers = True
"""


class Failed(Exception):
    pass


# -- output and commands ------------------------------------------------------

def title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def passed(text: str) -> None:
    print(f"PASS {text}", flush=True)


def check(condition: object, text: str, detail: object = "") -> None:
    if not condition:
        raise Failed(f"{text}: {detail}" if detail != "" else text)
    passed(text)


def run(*argv: str, ok: bool = True, show: bool = True, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run argv with stdin closed, output merged; shown indented; ok: must exit 0."""
    print(f"$ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**ENV, **(env or {})},
                          timeout=timeout, check=False)
    # dpkg's "(Reading database ... 5%" progress is noise in a log.
    lines = [line for line in done.stdout.splitlines()
             if not (line.startswith("(Reading database ...") and not line.endswith(")"))]
    for line in lines if show else lines[-15:] if done.returncode else []:
        print(f"    | {line}", flush=True)
    if ok and done.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {done.returncode}")
    return done


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# -- the chroot and its apt repository ---------------------------------------

def prepare_chroot() -> None:
    """policy-rc.d that allows, a runlevel that answers, apt on the local repo."""
    write(Path("/usr/sbin/policy-rc.d"), "#!/bin/sh\n# e2e chroot: allow every action\nexit 0\n",
          0o755)
    write(Path("/usr/sbin/runlevel"), "#!/bin/sh\necho N 2\n", 0o755)
    for old in Path("/etc/apt/sources.list.d").glob("*"):
        old.unlink()
    write(Path("/etc/apt/sources.list"), f"deb [trusted=yes] file:{REPO} ./\n")
    write(Path("/etc/apt/apt.conf.d/90e2e"),
          'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n')
    REPO.mkdir(parents=True, exist_ok=True)
    REPO.chmod(0o755)


def publish(deb: str) -> None:
    """Make the local repository hold exactly this ivle package, then apt-get update."""
    for old in REPO.glob("*.deb"):
        old.unlink()
    version = run("dpkg-deb", "-f", str(POOL / deb), "Version", show=False).stdout.strip()
    shutil.copyfile(POOL / deb, REPO / f"ivle_{version}_all.deb")
    (REPO / "Packages").write_text(_ftparchive("packages"))
    (REPO / "Release").write_text(_ftparchive("release"))
    print(f"published {deb} as ivle {version}", flush=True)


def _ftparchive(what: str) -> str:
    done = subprocess.run(["apt-ftparchive", what, "."], cwd=REPO, capture_output=True,
                          text=True, check=True, env=ENV)
    return done.stdout


def dpkg_status(package: str) -> tuple[str, str]:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Version}", package],
                          capture_output=True, text=True, check=False, env=ENV)
    status, _, version = done.stdout.partition("|")
    return status, version


def apt_upgrade() -> subprocess.CompletedProcess[str]:
    run("apt-get", "update", "-q")
    return run("apt-get", "upgrade", "-y", "-q", ok=False, timeout=600)


# -- database -------------------------------------------------------------------

def db_connect():  # type: ignore[no-untyped-def]
    import psycopg2

    return psycopg2.connect(**DB)


def query(sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = db_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def psql_file(path: Path) -> None:
    run("psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-h", DB["host"], "-U", DB["user"],
        "-d", DB["dbname"], "-f", str(path), env={"PGPASSWORD": DB["password"]})


def schema_dump() -> str:
    """The schema without ivle-maint's marker table (which a baseline may add).

    pg_dump's \\restrict lines (PostgreSQL >= 15.14) carry a random key: dropped.
    """
    dump = run("pg_dump", "--schema-only", "--exclude-table=ivle_maint_migrations",
               "-h", DB["host"], "-U", DB["user"], DB["dbname"], show=False,
               env={"PGPASSWORD": DB["password"]}).stdout
    return "".join(line for line in dump.splitlines(keepends=True)
                   if not line.startswith(("\\restrict", "\\unrestrict")))


def marker_rows() -> dict[str, tuple[str, datetime]]:
    """key -> (mode, applied_at) of ivle-maint's marker table ({} if absent)."""
    if not query("SELECT to_regclass('ivle_maint_migrations')")[0][0]:
        return {}
    rows = query("SELECT key, mode, applied_at FROM ivle_maint_migrations")
    return {str(k): (str(m), a) for k, m, a in rows}  # type: ignore[misc]


def start_postgres() -> None:
    conf = next(Path("/etc/postgresql").glob("*/main"))
    write(conf / "conf.d" / "e2e.conf", "fsync = off\nsynchronous_commit = off\n"
          "full_page_writes = off\n")
    run("pg_ctlcluster", conf.parent.name, "main", "start")


# -- processes, mounts, services ----------------------------------------------------

def processes() -> dict[int, tuple[str, str]]:
    """pid -> (state letter, command line) of every process in this namespace."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        found[int(entry.name)] = (state, cmd)
    return found


def console_pids() -> list[int]:
    return [pid for pid, (_s, cmd) in processes().items()
            if "/usr/share/ivle/services/python-console" in cmd]


def jail_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4] for line in handle]
    return [p for p in points if p == str(MOUNTS) or p.startswith(f"{MOUNTS}/")]


def start_console(login: str, uid: int) -> None:
    """A console as IVLE starts one: chrooted into the user's jail, as the user.

    setsid -f makes it our PID 1's child, so it is reaped once killed.
    """
    argv = ["setsid", "-f", "/usr/bin/python", str(SHARE / "services" / "python-console"),
            str(free_port()), "magic"]
    print(f"$ {' '.join(argv)}", flush=True)
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=30,
                   env={**ENV, "IVLE_CONSOLE_CHROOT": str(MOUNTS / login),
                        "IVLE_CONSOLE_CWD": f"/home/{login}", "IVLE_CONSOLE_UID": str(uid)})


def start_consoles() -> None:
    """A console for each of CONSOLE_USERS; wait (bounded) until all of them run."""
    for login, uid, _admin in USERS:
        if login in CONSOLE_USERS:
            start_console(login, uid)
    deadline = time.monotonic() + 10
    while len(console_pids()) < len(CONSOLE_USERS) and time.monotonic() < deadline:
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_running(name: str) -> bool:
    return run(f"/etc/init.d/{name}", "status", ok=False, show=False).returncode == 0


def service_pid(name: str) -> int:
    return int(Path(f"/run/{name}.pid").read_text())


@dataclass(frozen=True)
class Event:
    when: datetime
    service: str
    what: str  # start | stop | start FAILED ...


def events_since(since: datetime) -> list[Event]:
    found = []
    for line in SERVICES_LOG.read_text().splitlines():
        stamp, service, what = line.split(" ", 2)
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        if when >= since:
            found.append(Event(when, service, what.split(" pid=")[0]))
    return found


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return str(answer.read().decode().strip())


# -- user files ---------------------------------------------------------------------

# The sandbox's student files (scripts/ivle_sandbox, copied beside this
# script by scripts/e2e/run), bigger, with a non-ASCII name too.
def user_files(login: str) -> dict[str, bytes]:
    return sandbox_user_files(login, data_repeat=2048,
                              extra={"work/ünïcode name.txt": "naïve café\n".encode()})


def write_homes(users: list[tuple[str, int, bool]]) -> None:
    """Every user's files under src/LOGIN/home/LOGIN, owned by the user."""
    for login, uid, _admin in users:
        home = SRC / login / "home" / login
        for name, data in user_files(login).items():
            path = home / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for path in [home, *home.rglob("*")]:
            os.chown(path, uid, uid)


def home_checksums(users: list[tuple[str, int, bool]] | None = None) -> dict[str, str]:
    """relative path -> sha256:uid:mode of every entry under every src/LOGIN/home/LOGIN."""
    sums = {}
    for login, _uid, _admin in [*USERS, GHOST] if users is None else users:
        home = SRC / login / "home" / login
        for path in sorted(home.rglob("*")):
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            sums[str(path.relative_to(SRC))] = f"{digest}:{info.st_uid}:{oct(info.st_mode)}"
    return sums


# -- the node -----------------------------------------------------------------------

@dataclass
class Before:
    """What the node looked like at version 1.0, for the checks afterwards."""

    homes: dict[str, str]
    schema: str
    usrmgt_pid: int
    conf_comments: list[str]
    logins: int


def install_ivle_maint() -> None:
    title("install ivle-maint")
    run("dpkg", "-i", str(E2E / "ivle-maint.deb"))
    status, version = dpkg_status("ivle-maint")
    check(status == "install ok installed", f"ivle-maint {version} is installed", status)
    check(run("ivle-maint", "--version", show=False).stdout.strip().startswith("ivle-maint "),
          "ivle-maint --version answers")


def install_old_ivle() -> None:
    title(f"install the stand-in ivle {OLD} (Pre-Depends: ivle-maint)")
    publish(f"ivle_{OLD}_all.deb")
    run("apt-get", "update", "-q")
    run("apt-get", "install", "-y", "-q", "ivle")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD, f"ivle {OLD} is installed",
          f"{status} {version}")


def create_database() -> None:
    """Start PostgreSQL; an empty database ivle owned by the role ivle."""
    start_postgres()
    run("runuser", "-u", "postgres", "--", "psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-c",
        f"CREATE ROLE ivle LOGIN PASSWORD '{DB['password']}'")
    run("runuser", "-u", "postgres", "--", "createdb", "-O", "ivle", "ivle")


def load_old_schema(users: list[tuple[str, int, bool]]) -> None:
    """1.0's schema, as IVLE's upgrade procedure builds it (psql -f, in order), and its users."""
    psql_file(SHARE / "userdb" / "users.sql")
    for key in MIGRATIONS_OLD:
        psql_file(MIGRATIONS / f"{key}.sql")
    conn = db_connect()
    with conn, conn.cursor() as cur:
        for login, uid, admin in users:
            cur.execute("INSERT INTO login (login, unixid, admin, nick, fullname) "
                        "VALUES (%s, %s, %s, %s, %s)", (login, uid, admin, login, login.title()))
    conn.close()


def setup_node() -> Before:
    title(f"set up the IVLE node at {OLD}: database, jails, mounts, consoles, services")
    create_database()
    load_old_schema([*USERS, GHOST])
    write(IVLE_CONF, IVLE_CONF_TEXT, 0o640)
    write(CONF_DIR / "ivle-maint.conf", MAINT_CONF_TEXT)

    run("ivle-buildjail", show=False)
    write_homes([*USERS, GHOST])
    run("ivle-remakeuser", "-a")
    run("ivle-mountallusers")
    # ghost leaves the database with its jail mounted: ivle-mountallusers -u
    # will not see it; the upgrade must still leave no jail mounted.
    query("DELETE FROM login WHERE login = %s", (GHOST[0],))

    for service in ("apache2", "ivle-usrmgt-server"):
        run("invoke-rc.d", service, "start")
    start_consoles()

    check(service_running("apache2") and http_get(8080) == "apache2",
          "web server (apache2 stand-in) runs and answers on :8080")
    check(service_running("ivle-usrmgt-server"), "user management server runs")
    check(len(console_pids()) == len(CONSOLE_USERS),
          f"{len(CONSOLE_USERS)} python-console processes run in their jails", console_pids())
    expected = 3 * (len(USERS) + 1)
    check(len(jail_mounts()) == expected,
          f"{len(USERS) + 1} jails mounted ({expected} mounts, ghost's included)", jail_mounts())
    homes = home_checksums()
    check(len(homes) > 30, f"{len(homes)} home entries checksummed")
    return Before(homes=homes, schema=schema_dump(), usrmgt_pid=service_pid("ivle-usrmgt-server"),
                  conf_comments=[line for line in IVLE_CONF_TEXT.splitlines() if "#" in line],
                  logins=int(query("SELECT count(*) FROM login")[0][0]))  # type: ignore[arg-type]


def ivle_conf_media_version() -> str | None:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    text = "\n".join(line.strip() for line in IVLE_CONF.read_text().splitlines())
    parser.read_string(text.replace("[[jails]]", "[jails]"))
    return parser.get("media", "version", fallback=None)


def show_status() -> None:
    run("ivle-maint", "status")


# -- the checks after an upgrade ------------------------------------------------------

def check_upgraded(before: Before, since: datetime) -> None:
    """Every effect of the ten steps of IVLE's upgrade procedure, for the upgrade
    that began at `since`."""
    title(f"check every step of the {OLD} -> {NEW} upgrade")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == NEW,
          f"ivle {NEW} is installed and configured", f"{status} {version}")
    check(run("dpkg", "--audit", show=False).stdout.strip() == "", "dpkg --audit is clean")

    events = events_since(since)
    print("    service events: " + ", ".join(f"{e.service} {e.what}" for e in events))
    web = [e for e in events if e.service == "apache2"]
    usrmgt = [e for e in events if e.service == "ivle-usrmgt-server"]
    check([e.what for e in web] == ["stop", "start"],
          "web server stopped once and started once", [e.what for e in web])
    stopped, started = web[0].when, web[1].when
    code = datetime.fromtimestamp((SHARE / "VERSION").stat().st_ctime, UTC)
    check(stopped < code < started, "new code unpacked while the web server was stopped",
          f"stop {stopped} code {code} start {started}")
    check([e.what for e in usrmgt] == ["stop", "start"],
          "user management server restarted", [e.what for e in usrmgt])
    check(stopped < usrmgt[0].when and usrmgt[1].when < started,
          "usrmgt restarted after the code change, before the web server came back")
    check(service_running("apache2") and http_get(8080) == "apache2",
          "web server runs and answers after the upgrade")
    check(service_running("ivle-usrmgt-server")
          and service_pid("ivle-usrmgt-server") != before.usrmgt_pid,
          "user management server runs with a new pid")

    check(not console_pids(), "no python-console process left", console_pids())
    zombies = [pid for pid, (state, _c) in processes().items() if state == "Z"]
    check(not zombies, "no zombie processes", zombies)
    check(not jail_mounts(), "no jail mounted (ghost's stale mount included)", jail_mounts())

    rows = marker_rows()
    print("    marker: " + ", ".join(f"{k}={m}" for k, (m, _a) in sorted(rows.items())))
    check(all(rows.get(k, ("",))[0] == "baseline" for k in MIGRATIONS_OLD),
          f"migrations shipped by {OLD} recorded as baseline", rows)
    check(all(k in rows and rows[k][0] != "baseline" for k in MIGRATIONS_NEW),
          f"new migrations {', '.join(MIGRATIONS_NEW)} applied and recorded in the marker table")
    check(all(stopped < rows[k][1] < started for k in MIGRATIONS_NEW),
          "migrations ran while the web server was stopped")
    themes = dict(query("SELECT login, theme FROM login"))  # type: ignore[arg-type]
    check(themes.get("alice") == "dark" and themes.get("bob") == "light",
          "migration 20100301-01 took effect (login.theme)", themes)
    check(query("SELECT greeting('bob')")[0][0] == "hello,\tbob; welcome",
          "migration 20100301-02 took effect ($$ function with E'' string)")
    dumps = [p for p in BACKUPS.rglob("*") if p.is_file() and p.stat().st_size > 0]
    check(dumps, f"a pre-migration dump exists in {BACKUPS}", list(BACKUPS.rglob("*")))

    check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == NEW,
          f"jail template rebuilt with {NEW}")
    check(f'VERSION = "{NEW}"' in (TEMPLATE / "usr/lib/ivle/ivle/console.py").read_text(),
          "the changed jail file (usr/lib/ivle/ivle/console.py) is in the template")
    remade = [login for login, _u, _a in USERS
              if f"version = {NEW}" in (SRC / login / "home/.ivle/jail.conf").read_text()]
    check(len(remade) == len(USERS), f"every user's jail remade for {NEW}", remade)
    homes = home_checksums()
    changed = sorted(k for k in before.homes.keys() | homes.keys()
                     if before.homes.get(k) != homes.get(k))
    check(not changed, f"all {len(homes)} home entries intact (content, owner, mode)", changed)

    media = ivle_conf_media_version()
    check(media not in (None, OLD), f"media version changed: {OLD} -> {media}")
    text = IVLE_CONF.read_text()
    lost = [c for c in before.conf_comments if c.strip() not in text]
    check(not lost, "ivle.conf keeps every comment", lost)

    logs = list(MAINT_DIRS["log"].glob("*"))
    check(logs, f"run log written in {MAINT_DIRS['log']}", logs)
    show_status()


def check_database_unchanged(before: Before) -> None:
    now = schema_dump()
    diff = difflib.unified_diff(before.schema.splitlines(), now.splitlines(), lineterm="", n=0)
    check(now == before.schema, "database schema unchanged", "\n".join(list(diff)[:20]))
    rows = marker_rows()
    check(all(mode == "baseline" for mode, _a in rows.values()),
          "no migration recorded as applied", rows)
    check(int(query("SELECT count(*) FROM login")[0][0]) == before.logins,  # type: ignore[arg-type]
          "user rows unchanged")


def resume_line(output: str) -> str:
    return next((line for line in output.splitlines() if "resume with" in line), "")


# -- removal --------------------------------------------------------------------------

def check_remove_and_purge(before: Before) -> None:
    title("remove ivle and ivle-maint, then purge both (ivle's postrm without ivle-maint)")
    run("apt-get", "remove", "-y", "-q", "ivle", "ivle-maint")
    check(dpkg_status("ivle")[0] == "deinstall ok config-files", "ivle removed")
    check(shutil.which("ivle-maint", path=ENV["PATH"]) is None, "ivle-maint removed")
    check(MAINT_DIRS["state"].exists(), "removal (not purge) keeps ivle-maint's state")
    run("dpkg", "--purge", "ivle")
    check(dpkg_status("ivle")[0] in ("", "unknown ok not-installed"),
          "ivle purged while ivle-maint is gone (postrm guard)")
    run("dpkg", "--purge", "ivle-maint")
    for name, path in MAINT_DIRS.items():
        check(not path.exists(), f"purge removed ivle-maint's {name} directory {path}")
    check(any(p.is_file() for p in BACKUPS.rglob("*")),
          f"purge kept the database dumps in {BACKUPS}")
    check(int(query("SELECT count(*) FROM login")[0][0]) == before.logins  # type: ignore[arg-type]
          and "ivle_maint_migrations" in str(query("SELECT to_regclass('ivle_maint_migrations')")),
          "the IVLE database is untouched by the purge")
    check(home_checksums() == before.homes, "every user file is still there")
    check(IVLE_CONF.exists() and (CONF_DIR / "ivle-maint.conf").exists(),
          "administrator's ivle.conf and ivle-maint.conf kept")


# -- scenarios --------------------------------------------------------------------------

def node_at_old_version() -> Before:
    prepare_chroot()
    install_ivle_maint()
    install_old_ivle()
    return setup_node()


def check_addon_scripts(output: str) -> None:
    """What dh_ivle_maint put into ivle's scripts and control, as dpkg installed them."""
    title("ivle's maintainer scripts as dh_ivle_maint and dh_installinit generated them")
    info = Path("/var/lib/dpkg/info")
    preinst, postinst = (info / "ivle.preinst").read_text(), (info / "ivle.postinst").read_text()
    check("# Automatically added by dh_ivle_maint/" in preinst
          and '"format":"ivle-maint-migrations/1"' in preinst
          and all(f'"name":"{name}.sql"' in preinst for name in MIGRATIONS_NEW),
          "the preinst carries dh_ivle_maint's manifest of the new migrations")
    ours = postinst.index("ivle-maint hook postinst")
    theirs = postinst.index("invoke-rc.d --skip-systemd-native ivle-usrmgt-server")
    check(ours < theirs, "in the postinst, ivle-maint runs before dh_installinit's usrmgt lines")
    check("restart" not in postinst[theirs:theirs + 80],
          "dh_installinit only starts usrmgt (--no-restart-after-upgrade)")
    pre_depends = run("dpkg-query", "-W", "-f=${Pre-Depends}", "ivle", show=False).stdout
    check("ivle-maint (>= " in pre_depends and "init-system-helpers" in pre_depends,
          f"${{misc:Pre-Depends}} filled: {pre_depends}")
    check("preflight checks passed" in output, "the preinst's preflight ran")


def scenario_upgrade() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} (two new migrations, a changed jail file); apt-get upgrade")
    publish(f"ivle_{NEW}_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode == 0, "apt-get upgrade -y succeeded", done.returncode)
    check_upgraded(before, since)
    check_addon_scripts(done.stdout)
    check_remove_and_purge(before)


def scenario_failed_migration() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} whose first new migration fails; apt-get upgrade")
    publish(f"ivle_{NEW}_badmigration_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    line = resume_line(done.stdout)
    check("dpkg --configure -a" in line and "ivle-maint rerun" in line,
          f"the error names the resume command: {line.strip()!r}")
    status, version = dpkg_status("ivle")
    check(status == "install ok half-configured" and version == NEW,
          f"ivle {NEW} is left half-configured", f"{status} {version}")
    check_database_unchanged(before)
    check(not service_running("apache2"),
          "web server stays stopped while the upgrade is unfinished")
    usrmgt = [e.what for e in events_since(since) if e.service == "ivle-usrmgt-server"]
    check(usrmgt == [] and service_running("ivle-usrmgt-server"),
          "usrmgt untouched: no init script ran the new code on the old schema", usrmgt)
    failed = run("ivle-maint", "status", show=False).stdout
    check("failed" in failed and "migrate" in failed, "ivle-maint status shows the failed step")
    show_status()

    title("fix the migration in place, then ivle-maint rerun and dpkg --configure -a")
    (MIGRATIONS / "20100301-01.sql").write_text(GOOD_FIRST_MIGRATION)
    run("ivle-maint", "rerun")
    check(service_running("apache2"), "ivle-maint rerun finished the upgrade (web server up)")
    web_events = len([e for e in events_since(since) if e.service == "apache2"])
    done = run("dpkg", "--configure", "-a")
    check(len([e for e in events_since(since) if e.service == "apache2"]) == web_events,
          "dpkg --configure -a completes without repeating finished steps")
    check_upgraded(before, since)


def scenario_failed_preinst() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} whose preinst fails after ivle-maint's hook; apt-get upgrade")
    publish(f"ivle_{NEW}_badpreinst_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    check("injected failure" in done.stdout, "the failure is the new preinst's")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD,
          f"dpkg's abort-upgrade kept ivle {OLD} installed", f"{status} {version}")
    check((SHARE / "VERSION").read_text().strip() == OLD, f"the {OLD} code is in place")
    web = [e.what for e in events_since(since) if e.service == "apache2"]
    check(web == ["stop", "start"], "web server was stopped, then started again by abort-upgrade",
          web)
    check(service_running("apache2") and http_get(8080) == "apache2",
          f"web server is back in service on {OLD}")
    check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == OLD,
          "jail template untouched")
    check_database_unchanged(before)
    show_status()

    title(f"publish the fixed ivle {NEW}; apt-get upgrade now completes")
    publish(f"ivle_{NEW}_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode == 0, "apt-get upgrade -y succeeded", done.returncode)
    check_upgraded(before, since)


def scenario_failed_preflight() -> None:
    """A new migration the checks refuse: under dpkg the preinst sees it through
    dh_ivle_maint's manifest, before anything is stopped."""
    before = node_at_old_version()
    title(f"publish ivle {NEW} with a migration ivle-maint refuses; apt-get upgrade")
    publish(f"ivle_{NEW}_badsql_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    check("cannot run inside a transaction" in done.stdout,
          "the preinst's preflight names the refused migration")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD,
          f"ivle {OLD} stays installed", f"{status} {version}")
    events = [f"{e.service} {e.what}" for e in events_since(since)]
    check(events == [], "nothing was stopped: the site stayed up", events)
    check(service_running("apache2") and http_get(8080) == "apache2", "web server answers")
    check(len(console_pids()) == 3, "consoles still run")
    check_database_unchanged(before)


def scenario_reinstall() -> None:
    """Remove ivle (its config files stay), install it again: dpkg then calls
    'preinst install OLD NEW' and 'postinst configure OLD'."""
    before = node_at_old_version()
    title(f"remove ivle {OLD} (config files stay), then install it again")
    run("apt-get", "remove", "-y", "-q", "ivle")
    check(dpkg_status("ivle")[0] == "deinstall ok config-files", "ivle removed, config files kept")
    done = run("apt-get", "install", "-y", "-q", "ivle", ok=False)
    check(done.returncode == 0, "apt-get install of the removed package succeeded",
          done.returncode)
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD, f"ivle {OLD} installed again",
          f"{status} {version}")
    check(run("dpkg", "--audit", show=False).stdout.strip() == "", "dpkg --audit is clean")
    check(service_running("apache2") and http_get(8080) == "apache2", "web server runs")
    check(service_running("ivle-usrmgt-server"), "user management server runs")
    check_database_unchanged(before)
    check(home_checksums() == before.homes, "every user file is intact")
    show_status()


SKIP_SNAPSHOT = ("/proc", "/sys", "/dev", "/srv/e2e", "/tmp", "/var/tmp", "/run",
                 "/var/cache/apt", "/var/lib/apt", "/var/lib/dpkg", "/var/log/apt",
                 "/var/cache/debconf", "/var/cache/ldconfig", "/etc/ld.so.cache",
                 "/var/log/dpkg.log", "/var/log/alternatives.log", "/root")


def snapshot() -> dict[str, str]:
    """path -> type of every file outside the volatile places (like piuparts)."""
    found: dict[str, str] = {}
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if not os.path.join(top, d).startswith(SKIP_SNAPSHOT)]
        for name in dirs + files:
            path = os.path.join(top, name)
            if path.startswith(SKIP_SNAPSHOT):
                continue
            found[path] = "l" if os.path.islink(path) else "d" if os.path.isdir(path) else "f"
    return found


def scenario_lifecycle() -> None:
    """ivle-maint alone: install, upgrade, remove, purge leave nothing behind."""
    prepare_chroot()
    title("install ivle-maint: only its own files appear")
    empty = snapshot()
    install_ivle_maint()
    listed = set(run("dpkg", "-L", "ivle-maint", show=False).stdout.split())
    new = set(snapshot()) - set(empty)
    odd = sorted(p for p in new if p not in listed and "/__pycache__" not in p)
    check(not odd, f"install created {len(new)} paths, all the package's own or byte-code", odd)
    check(not any(p.exists() for p in MAINT_DIRS.values()),
          "install created no state, log or run directory")
    run("ivle-maint", "--help", show=False)
    run("ivle-maint", "status")

    title("upgrade ivle-maint to a newer build")
    run("dpkg", "-i", str(E2E / "ivle-maint-next.deb"))
    status, version = dpkg_status("ivle-maint")
    check(status == "install ok installed" and "e2e" in version, f"upgraded to {version}")

    title("remove and purge ivle-maint after it has run (state, log, lock, dumps)")
    for name, path in MAINT_DIRS.items():
        write(path / f"{name}-file", f"written by ivle-maint ({name})\n")
    write(BACKUPS / "ivle-before-1.1.dump", "-- a pre-migration dump\n")
    write(CONF_DIR / "ivle-maint.conf", MAINT_CONF_TEXT)  # the administrator's file
    run("dpkg", "--remove", "ivle-maint")
    check(not Path("/usr/bin/ivle-maint").exists(), "removed: /usr/bin/ivle-maint gone")
    check(all(p.exists() for p in MAINT_DIRS.values()), "removal keeps state and logs")
    run("dpkg", "--purge", "ivle-maint")
    check(dpkg_status("ivle-maint")[0] in ("", "unknown ok not-installed"), "purged")
    for name, path in MAINT_DIRS.items():
        check(not path.exists(), f"purge removed the {name} directory {path}")
    check((BACKUPS / "ivle-before-1.1.dump").exists(), f"purge kept the dumps in {BACKUPS}")
    check((CONF_DIR / "ivle-maint.conf").exists(), "purge kept the administrator's settings")
    left = sorted(set(snapshot()) - set(empty))
    expected = {str(BACKUPS), str(BACKUPS / "ivle-before-1.1.dump"), str(CONF_DIR),
                str(CONF_DIR / "ivle-maint.conf")}
    check(set(left) == expected, "nothing else left behind after purge", set(left) - expected)
    gone = sorted(set(empty) - set(snapshot()))
    check(not gone, "nothing that was there before is missing", gone)
    others = [cmd for pid, (_s, cmd) in processes().items() if pid not in (1, os.getpid())]
    check(not others, "no process left running", others)


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


SCENARIOS: dict[str, Callable[[], None]] = {
    "lifecycle": scenario_lifecycle,
    "upgrade": scenario_upgrade,
    "failed-migration": scenario_failed_migration,
    "failed-preinst": scenario_failed_preinst,
    "failed-preflight": scenario_failed_preflight,
    "reinstall": scenario_reinstall,
    "cluster": scenario_cluster,
}


def main(name: str) -> int:
    started = time.monotonic()
    try:
        SCENARIOS[name]()
    except (Failed, subprocess.SubprocessError, OSError) as exc:
        print(f"FAIL {exc}", flush=True)
        print(f"SCENARIO {name}: FAILED after {time.monotonic() - started:.0f}s", flush=True)
        return 1
    print(f"SCENARIO {name}: PASSED in {time.monotonic() - started:.0f}s", flush=True)
    return 0


def as_init(name: str) -> int:
    """PID 1 of the namespace: run the scenario in a child and reap every orphan."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    child = os.fork()
    if child == 0:
        os._exit(main(name))
    while True:
        pid, status = os.wait()
        if pid == child:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if sys.argv[1:] == ["node-init"]:
        sys.exit(node_init())
    if sys.argv[1:2] == ["node"] and len(sys.argv) == 6:
        sys.exit(node_command(*sys.argv[2:]))
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: inside.py {{{'|'.join(SCENARIOS)}}}")
    sys.exit(as_init(sys.argv[1]) if os.getpid() == 1 else main(sys.argv[1]))
