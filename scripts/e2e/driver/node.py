"""One node in the chroot: its apt repository, database, processes, user
files, setup, and the checks after an upgrade."""

from __future__ import annotations

import configparser
import difflib
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ivle_sandbox.jailtree import user_files as sandbox_user_files

from .config import (
    BACKUPS,
    CONF_DIR,
    CONSOLE_USERS,
    DB,
    E2E,
    ENV,
    GHOST,
    IVLE_CONF,
    IVLE_CONF_TEXT,
    MAINT_CONF_TEXT,
    MAINT_DIRS,
    MIGRATIONS,
    MIGRATIONS_NEW,
    MIGRATIONS_OLD,
    MOUNTS,
    NEW,
    OLD,
    POOL,
    REPO,
    SERVICES_LOG,
    SHARE,
    SRC,
    TEMPLATE,
    USERS,
)
from .harness import check, run, title, write

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
    """Who answers IVLE's front page on PORT: the stand-in's name, its last
    line (above it, the page's link to its static files)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return str(answer.read().decode().strip().splitlines()[-1])


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
    # A trigger function (one the old code cannot call: 1.1 stays additive),
    # its $$ body whole: the E'' string and the ';' inside it.
    body = query("SELECT prosrc FROM pg_proc WHERE proname = 'note_greeting'")
    check(bool(body) and "E'hello,\\t' || NEW.body || '; welcome'" in body[0][0],
          "migration 20100301-02 took effect ($$ function with E'' string)", body)
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
