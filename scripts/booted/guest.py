#!/usr/bin/python3
"""Run inside a booted node (scripts bind-mounted read-only at /srv/scripts).

    guest.py setup HOST_MNTNS WEB_PORT DB_PORT USRMGT_PORT [REPO]
    guest.py setup-cluster ROLE NAME HOST_MNTNS WEB_PORT MASTER_DB_PORT USRMGT_PORT
    guest.py size HOST_MNTNS USERS CONSOLES JAIL_BUILD_SECONDS REMAKE_SECONDS_PER_USER
    guest.py facts

setup: the node as an administrator leaves it at IVLE 1.0 (its services
are not started at boot, nodes share a network namespace): PostgreSQL on
DB_PORT with IVLE's database at 1.0's schema and users (made before the
package is installed: its usrmgt refuses to start without them), ivle.conf
and ivle-maint.conf, apt pointed at the bind-mounted repository, `apt-get
install ivle=1.0`, IVLE's Apache site enabled on WEB_PORT, jails built,
remade and mounted (plus a stale mount of a deleted user), consoles
running as transient units.  Saves what it saw to /root/before.json.

size (benchmarks, after setup): the node grown to USERS users (their
homes, jails remade and mounted; the jail template made a private mount
first) with CONSOLES consoles running, IVLE's
stand-ins doing fixed work (fakes.conf: ivle-buildjail's delay,
ivle-remakeuser's delay per user), and ivle-maint.conf's [jails]
run_mountallusers back to its default (off): the settings a site runs.

facts: one JSON object of what the node looks like now (versions, unit
states, journal events of apache2 and usrmgt, marker table, jail mounts,
consoles, home checksums, media version); the test asserts on it.

Helpers (users, homes, schema, marker table) come from the end-to-end
driver, scripts/e2e/driver/.  Their progress goes to stderr: stdout carries
only the facts' JSON.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The driver package and the stand-in beside it; ivle_sandbox, which the driver uses.
sys.path[:0] = ["/srv/scripts/e2e", "/srv/scripts"]
import standin  # noqa: E402
from driver import cluster, config, harness, node  # noqa: E402

BEFORE = Path("/root/before.json")
PORTS = Path("/root/ports.json")
UNITS = ("apache2.service", "ivle-usrmgt-server.service")


def sh(*argv: str, ok: bool = True, env: dict[str, str] | None = None) -> str:
    return harness.run(*argv, ok=ok, env=env).stdout


def use_ports() -> dict[str, int]:
    ports: dict[str, int] = json.loads(PORTS.read_text())
    config.DB["port"] = ports["db"]
    config.ENV["PGPORT"] = str(ports["db"])  # psql and pg_dump run by the driver's helpers
    return ports


def use_mount_namespace(host_mntns: str) -> None:
    """The stand-ins mount jails only in a namespace that is not the host's."""
    os.environ["IVLE_SANDBOX_MNTNS"] = f"{host_mntns}:{os.stat('/proc/self/ns/mnt').st_ino}"
    config.ENV["IVLE_SANDBOX_MNTNS"] = os.environ["IVLE_SANDBOX_MNTNS"]


def use_repository(repo: str) -> None:
    """apt on the bind-mounted repository REPO only, without recommends."""
    harness.write(Path("/etc/apt/sources.list"), f"deb [trusted=yes] file:/srv/repos/{repo} ./\n")
    harness.write(Path("/etc/apt/apt.conf.d/90booted"),
                  'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n')


def ivle_conf(ports: dict[str, int]) -> str:
    text = config.IVLE_CONF_TEXT.replace("port = 5432", f"port = {ports['db']}")
    return text.replace("port = 2178", f"port = {ports['usrmgt']}")


def database(ports: dict[str, int]) -> None:
    conf = next(Path("/etc/postgresql").glob("*/main"))
    harness.write(conf / "conf.d" / "booted.conf",
                  f"port = {ports['db']}\nfsync = off\nsynchronous_commit = off\n")
    sh("systemctl", "enable", "--now", "postgresql")  # not started at boot (tree.py)
    sh("systemctl", "start", f"postgresql@{conf.parent.name}-main")
    psql = ("runuser", "-u", "postgres", "--", "psql", "-p", str(ports["db"]), "-q", "-X",
            "-v", "ON_ERROR_STOP=1")
    sh(*psql, "-c", f"CREATE ROLE ivle LOGIN PASSWORD '{config.DB['password']}'")
    sh(*psql, "-c", "CREATE DATABASE ivle OWNER ivle")
    schema = Path("/root/schema-1.0")  # 1.0's schema, as IVLE's setup would load it
    harness.write(schema / "users.sql", standin.USERS_SQL)
    for key in config.MIGRATIONS_OLD:
        harness.write(schema / f"{key}.sql", standin.MIGRATIONS_A[f"{key}.sql"])
    node.psql_file(schema / "users.sql")
    for key in config.MIGRATIONS_OLD:
        node.psql_file(schema / f"{key}.sql")
    conn = node.db_connect()
    with conn, conn.cursor() as cur:
        for login, uid, admin in [*config.USERS, config.GHOST]:
            cur.execute("INSERT INTO login (login, unixid, admin, nick, fullname) "
                        "VALUES (%s, %s, %s, %s, %s)", (login, uid, admin, login, login.title()))
    conn.close()


def start_consoles() -> None:
    """Consoles as transient units of the guest's systemd, in their users' jails."""
    for login, uid, _admin in config.USERS:
        if login in config.CONSOLE_USERS:
            sh("systemd-run", "--quiet", "--collect", f"--unit=ivle-console-{login}",
               f"--setenv=IVLE_CONSOLE_CHROOT={config.MOUNTS / login}",
               f"--setenv=IVLE_CONSOLE_CWD=/home/{login}", f"--setenv=IVLE_CONSOLE_UID={uid}",
               "/usr/bin/python3", str(config.SHARE / "services/python-console"), "0", "magic")
    deadline = time.monotonic() + 10
    while len(node.console_pids()) < len(config.CONSOLE_USERS) and time.monotonic() < deadline:
        time.sleep(0.1)


def setup(host_mntns: str, web: str, db: str, usrmgt: str,
          repo: str = "good") -> dict[str, object]:
    ports = {"web": int(web), "db": int(db), "usrmgt": int(usrmgt)}
    PORTS.write_text(json.dumps(ports))
    use_ports()
    use_mount_namespace(host_mntns)
    database(ports)
    harness.write(config.IVLE_CONF, ivle_conf(ports), 0o640)
    os.chown(config.IVLE_CONF, 0, grp.getgrnam("www-data").gr_gid)  # Apache reads it
    harness.write(config.CONF_DIR / "ivle-maint.conf", config.MAINT_CONF_TEXT)
    use_repository(repo)
    harness.write(Path("/etc/apache2/ports.conf"), f"Listen 127.0.0.1:{ports['web']}\n")
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", "ivle=1.0")
    sh("a2dissite", "-q", "000-default")
    sh("a2ensite", "-q", "ivle")
    sh("systemctl", "enable", "--now", "apache2")  # not started at boot (tree.py)
    sh("ivle-buildjail")
    node.write_homes([*config.USERS, config.GHOST])
    sh("ivle-remakeuser", "-a")
    sh("ivle-mountallusers")
    node.query("DELETE FROM login WHERE login = %s", (config.GHOST[0],))
    start_consoles()
    before = facts()
    before["schema"] = node.schema_dump()
    BEFORE.write_text(json.dumps(before))
    return {k: v for k, v in before.items() if k not in ("homes", "schema")}


def setup_cluster(  # noqa: PLR0917 (the command line's arguments)
        role: str, name: str, host_mntns: str, web: str, db: str,
        usrmgt: str) -> dict[str, object]:
    """A cluster node at 1.0: the master holds the database and usrmgt; a slave
    serves the site on WEB against the master's database (DB)."""
    ports = {"web": int(web), "db": int(db), "usrmgt": int(usrmgt)}
    PORTS.write_text(json.dumps(ports))
    use_ports()
    use_mount_namespace(host_mntns)
    if role == "master":
        database(ports)
    else:
        # usrmgt runs on the master only: its administrator masks it here.
        sh("systemctl", "mask", "ivle-usrmgt-server.service")
        harness.write(Path("/etc/apache2/ports.conf"), f"Listen 127.0.0.1:{ports['web']}\n")
    harness.write(config.IVLE_CONF, ivle_conf(ports), 0o640)
    os.chown(config.IVLE_CONF, 0, grp.getgrnam("www-data").gr_gid)
    # Where a slave's web server answers is configured before IVLE is
    # installed, as an administrator sets a node up ([cluster] is the last
    # section): the install's row carries it.
    probe = f"probe_url = http://127.0.0.1:{ports['web']}/\n" if role != "master" else ""
    harness.write(config.CONF_DIR / "ivle-maint.conf",
                  cluster.CLUSTER_CONF_TEXT.format(role=role, name=name) + probe)
    use_repository("good")
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", "ivle=1.0")
    sh("ivle-buildjail")
    node.write_homes(config.USERS)
    sh("ivle-remakeuser", "-a")
    if role != "master":
        sh("a2dissite", "-q", "000-default")
        sh("a2ensite", "-q", "ivle")
        sh("systemctl", "enable", "--now", "apache2")
        sh("ivle-mountallusers")
        start_consoles()
    # The install recorded the node before its web server ran; the
    # administrator's first look refreshes the row to what runs now.
    sh("ivle-maint", "cluster", "status")
    before = facts()
    BEFORE.write_text(json.dumps(before))
    return {"ivle": before["ivle"]}


def size(host_mntns: str, users: str, consoles: str, jail_build: str,
         per_user: str) -> dict[str, object]:
    """The node set up at 1.0, grown for a benchmark (see the docstring)."""
    use_ports()
    use_mount_namespace(host_mntns)
    extra = [(f"user{i:04d}", 6000 + i, False) for i in range(int(users) - len(config.USERS))]
    conn = node.db_connect()
    with conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO login (login, unixid, admin, nick, fullname) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [(login, uid, admin, login, login) for login, uid, admin in extra])
    conn.close()
    if extra:
        # systemd makes / a shared mount: every jail (a bind of the template)
        # joins its peer group, and each user's home mounted in one jail then
        # propagates into every other (49,502 mounts for 500 users; PID 1
        # needs over 90 s for a stop job).  A private template, as mounts
        # were before systemd, keeps it to three mounts per user.
        template = str(config.TEMPLATE)
        mounted = Path("/proc/self/mountinfo").read_text().splitlines()
        if template not in (line.split()[4] for line in mounted):
            sh("mount", "--bind", template, template)
            sh("mount", "--make-private", template)
        node.write_homes(extra)
        sh("ivle-remakeuser", *[login for login, _uid, _admin in extra])
        sh("ivle-mountallusers")  # the users not mounted yet
    wanted = int(consoles) - len(node.console_pids())
    for login, uid, _admin in extra[:max(0, wanted)]:
        sh("systemd-run", "--quiet", "--collect", f"--unit=ivle-console-{login}",
           f"--setenv=IVLE_CONSOLE_CHROOT={config.MOUNTS / login}",
           f"--setenv=IVLE_CONSOLE_CWD=/home/{login}", f"--setenv=IVLE_CONSOLE_UID={uid}",
           "/usr/bin/python3", str(config.SHARE / "services/python-console"), "0", "magic")
    harness.write(config.CONF_DIR / "fakes.conf",
                  f"[ivle-buildjail]\ndelay = {float(jail_build)}\n"
                  f"[ivle-remakeuser]\ndelay_per_user = {float(per_user)}\n")
    maint_conf = config.CONF_DIR / "ivle-maint.conf"
    maint_conf.write_text(maint_conf.read_text().replace("run_mountallusers = True",
                                                         "run_mountallusers = False"))
    deadline = time.monotonic() + 30
    while len(node.console_pids()) < int(consoles) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {"users": len(node.query("SELECT login FROM login")),
            "consoles": len(node.console_pids()), "jail_mounts": len(node.jail_mounts())}


def journal_events() -> list[dict[str, object]]:
    """Job results of apache2 and usrmgt, in order: {t, unit, job, result}."""
    out = subprocess.run(
        ["journalctl", "-o", "json", "--no-pager", "_PID=1", *[f"UNIT={u}" for u in UNITS]],
        capture_output=True, text=True, check=False).stdout
    events = []
    for line in out.splitlines():
        entry = json.loads(line)
        if entry.get("JOB_TYPE") and entry.get("JOB_RESULT"):
            events.append({"t": int(entry["__REALTIME_TIMESTAMP"]) / 1e6, "unit": entry["UNIT"],
                           "job": entry["JOB_TYPE"], "result": entry["JOB_RESULT"],
                           "message": entry.get("MESSAGE", "")})
    return events


def unit_state(unit: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState,SubState,MainPID,"
                          "ExecMainStartTimestampMonotonic,ActiveEnterTimestamp"],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def dpkg_status() -> str:
    return " ".join(node.dpkg_status("ivle"))


def facts() -> dict[str, object]:
    use_ports()
    rows = node.marker_rows()
    usrmgt_pid = Path("/run/ivle-usrmgt-server.pid")
    return {
        "ivle": dpkg_status(),
        "code_time": (config.SHARE / "VERSION").stat().st_ctime,
        "units": {u: unit_state(u) for u in UNITS},
        "usrmgt_pid": int(usrmgt_pid.read_text()) if usrmgt_pid.exists() else 0,
        "events": journal_events(),
        "marker": {k: [m, a.timestamp()] for k, (m, a) in rows.items()},
        "jail_mounts": node.jail_mounts(),
        "consoles": node.console_pids(),
        "homes": node.home_checksums(),
        "media": node.ivle_conf_media_version(),
        "template_version": (config.TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip()
        if (config.TEMPLATE / "usr/lib/ivle/VERSION").exists() else "",
        "dumps": [str(p) for p in config.BACKUPS.rglob("*") if p.is_file()],
        "themes": dict(node.query("SELECT login, theme FROM login"))  # type: ignore[arg-type]
        if "20100301-01" in rows and rows["20100301-01"][0] != "baseline" else {},
        "schema_same": (node.schema_dump() == json.loads(BEFORE.read_text())["schema"])
        if BEFORE.exists() and "schema" in json.loads(BEFORE.read_text()) else None,
    }


def main(argv: list[str]) -> int:
    """Run the command; only its JSON answer goes to stdout."""
    commands = {"setup": setup, "setup-cluster": setup_cluster, "size": size, "facts": facts}
    command = commands.get(argv[0]) if argv else None
    if command is None:
        print(__doc__, file=sys.stderr)
        return 2
    with contextlib.redirect_stdout(sys.stderr):
        answer = command(*argv[1:])
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
