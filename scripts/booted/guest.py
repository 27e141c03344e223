#!/usr/bin/python3
"""Run inside a booted node (scripts bind-mounted read-only at /srv/scripts).

    guest.py setup HOST_MNTNS WEB_PORT DB_PORT USRMGT_PORT [REPO]
    guest.py setup-cluster ROLE NAME HOST_MNTNS WEB_PORT MASTER_DB_PORT USRMGT_PORT
    guest.py facts

setup: the node as an administrator leaves it at IVLE 1.0 (its services
are not started at boot, nodes share a network namespace): PostgreSQL on
DB_PORT with IVLE's database at 1.0's schema and users (made before the
package is installed: its usrmgt refuses to start without them), ivle.conf
and ivle-maint.conf, apt pointed at the bind-mounted repository, `apt-get
install ivle=1.0`, IVLE's Apache site enabled on WEB_PORT, jails built,
remade and mounted (plus a stale mount of a deleted user), consoles
running as transient units.  Saves what it saw to /root/before.json.

facts: one JSON object of what the node looks like now (versions, unit
states, journal events of apache2 and usrmgt, marker table, jail mounts,
consoles, home checksums, media version); the test asserts on it.

Helpers (users, homes, schema, marker table) come from scripts/e2e/inside.py.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, "/srv/scripts/e2e")
import inside
import standin

BEFORE = Path("/root/before.json")
PORTS = Path("/root/ports.json")
UNITS = ("apache2.service", "ivle-usrmgt-server.service")


def sh(*argv: str, ok: bool = True, env: dict[str, str] | None = None) -> str:
    return inside.run(*argv, ok=ok, env=env).stdout


def use_ports() -> dict[str, int]:
    ports: dict[str, int] = json.loads(PORTS.read_text())
    inside.DB["port"] = ports["db"]
    inside.ENV["PGPORT"] = str(ports["db"])  # psql and pg_dump run by inside.py's helpers
    return ports


def ivle_conf(ports: dict[str, int]) -> str:
    text = inside.IVLE_CONF_TEXT.replace("port = 5432", f"port = {ports['db']}")
    return text.replace("port = 2178", f"port = {ports['usrmgt']}")


def database(ports: dict[str, int]) -> None:
    conf = next(Path("/etc/postgresql").glob("*/main"))
    inside.write(conf / "conf.d" / "booted.conf",
                 f"port = {ports['db']}\nfsync = off\nsynchronous_commit = off\n")
    sh("systemctl", "enable", "--now", "postgresql")  # not started at boot (tree.py)
    sh("systemctl", "start", f"postgresql@{conf.parent.name}-main")
    psql = ("runuser", "-u", "postgres", "--", "psql", "-p", str(ports["db"]), "-q", "-X",
            "-v", "ON_ERROR_STOP=1")
    sh(*psql, "-c", f"CREATE ROLE ivle LOGIN PASSWORD '{inside.DB['password']}'")
    sh(*psql, "-c", "CREATE DATABASE ivle OWNER ivle")
    schema = Path("/root/schema-1.0")  # 1.0's schema, as IVLE's setup would load it
    inside.write(schema / "users.sql", standin.USERS_SQL)
    for key in inside.MIGRATIONS_OLD:
        inside.write(schema / f"{key}.sql", standin.MIGRATIONS_A[f"{key}.sql"])
    inside.psql_file(schema / "users.sql")
    for key in inside.MIGRATIONS_OLD:
        inside.psql_file(schema / f"{key}.sql")
    conn = inside.db_connect()
    with conn, conn.cursor() as cur:
        for login, uid, admin in [*inside.USERS, inside.GHOST]:
            cur.execute("INSERT INTO login (login, unixid, admin, nick, fullname) "
                        "VALUES (%s, %s, %s, %s, %s)", (login, uid, admin, login, login.title()))
    conn.close()


def start_consoles() -> None:
    """Consoles as transient units of the guest's systemd, in their users' jails."""
    for login, uid, _admin in inside.USERS:
        if login in inside.CONSOLE_USERS:
            sh("systemd-run", "--quiet", "--collect", f"--unit=ivle-console-{login}",
               f"--setenv=IVLE_CONSOLE_CHROOT={inside.MOUNTS / login}",
               f"--setenv=IVLE_CONSOLE_CWD=/home/{login}", f"--setenv=IVLE_CONSOLE_UID={uid}",
               "/usr/bin/python3", str(inside.SHARE / "services/python-console"), "0", "magic")
    deadline = time.monotonic() + 10
    while len(inside.console_pids()) < len(inside.CONSOLE_USERS) and time.monotonic() < deadline:
        time.sleep(0.1)


def setup(host_mntns: str, web: str, db: str, usrmgt: str, repo: str = "good") -> int:
    ports = {"web": int(web), "db": int(db), "usrmgt": int(usrmgt)}
    PORTS.write_text(json.dumps(ports))
    use_ports()
    os.environ["IVLE_SANDBOX_MNTNS"] = f"{host_mntns}:{os.stat('/proc/self/ns/mnt').st_ino}"
    inside.ENV["IVLE_SANDBOX_MNTNS"] = os.environ["IVLE_SANDBOX_MNTNS"]
    database(ports)
    inside.write(inside.IVLE_CONF, ivle_conf(ports), 0o640)
    os.chown(inside.IVLE_CONF, 0, grp.getgrnam("www-data").gr_gid)  # Apache reads it
    inside.write(inside.CONF_DIR / "ivle-maint.conf", inside.MAINT_CONF_TEXT)
    inside.write(Path("/etc/apt/sources.list"), f"deb [trusted=yes] file:/srv/repos/{repo} ./\n")
    inside.write(Path("/etc/apt/apt.conf.d/90booted"),
                 'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n')
    inside.write(Path("/etc/apache2/ports.conf"), f"Listen 127.0.0.1:{ports['web']}\n")
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", "ivle=1.0")
    sh("a2dissite", "-q", "000-default")
    sh("a2ensite", "-q", "ivle")
    sh("systemctl", "enable", "--now", "apache2")  # not started at boot (tree.py)
    sh("ivle-buildjail")
    inside.write_homes([*inside.USERS, inside.GHOST])
    sh("ivle-remakeuser", "-a")
    sh("ivle-mountallusers")
    inside.query("DELETE FROM login WHERE login = %s", (inside.GHOST[0],))
    start_consoles()
    before = facts()
    before["schema"] = inside.schema_dump()
    BEFORE.write_text(json.dumps(before))
    print(json.dumps({k: v for k, v in before.items() if k not in ("homes", "schema")}))
    return 0


def setup_cluster(  # noqa: PLR0917 (the command line's arguments)
        role: str, name: str, host_mntns: str, web: str, db: str, usrmgt: str) -> int:
    """A cluster node at 1.0: the master holds the database and usrmgt; a slave
    serves the site on WEB against the master's database (DB)."""
    ports = {"web": int(web), "db": int(db), "usrmgt": int(usrmgt)}
    PORTS.write_text(json.dumps(ports))
    use_ports()
    os.environ["IVLE_SANDBOX_MNTNS"] = f"{host_mntns}:{os.stat('/proc/self/ns/mnt').st_ino}"
    inside.ENV["IVLE_SANDBOX_MNTNS"] = os.environ["IVLE_SANDBOX_MNTNS"]
    if role == "master":
        database(ports)
    else:
        # usrmgt runs on the master only: its administrator masks it here.
        sh("systemctl", "mask", "ivle-usrmgt-server.service")
        inside.write(Path("/etc/apache2/ports.conf"), f"Listen 127.0.0.1:{ports['web']}\n")
    inside.write(inside.IVLE_CONF, ivle_conf(ports), 0o640)
    os.chown(inside.IVLE_CONF, 0, grp.getgrnam("www-data").gr_gid)
    inside.write(inside.CONF_DIR / "ivle-maint.conf",
                 inside.CLUSTER_CONF_TEXT.format(role=role, name=name))
    inside.write(Path("/etc/apt/sources.list"), "deb [trusted=yes] file:/srv/repos/good ./\n")
    inside.write(Path("/etc/apt/apt.conf.d/90booted"),
                 'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n')
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", "ivle=1.0")
    sh("ivle-buildjail")
    inside.write_homes(inside.USERS)
    sh("ivle-remakeuser", "-a")
    if role != "master":
        sh("a2dissite", "-q", "000-default")
        sh("a2ensite", "-q", "ivle")
        sh("systemctl", "enable", "--now", "apache2")
        sh("ivle-mountallusers")
        start_consoles()
    before = facts()
    BEFORE.write_text(json.dumps(before))
    print(json.dumps({"ivle": before["ivle"]}))
    return 0


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
    return " ".join(inside.dpkg_status("ivle"))


def facts() -> dict[str, object]:
    use_ports()
    rows = inside.marker_rows()
    usrmgt_pid = Path("/run/ivle-usrmgt-server.pid")
    return {
        "ivle": dpkg_status(),
        "code_time": (inside.SHARE / "VERSION").stat().st_ctime,
        "units": {u: unit_state(u) for u in UNITS},
        "usrmgt_pid": int(usrmgt_pid.read_text()) if usrmgt_pid.exists() else 0,
        "events": journal_events(),
        "marker": {k: [m, a.timestamp()] for k, (m, a) in rows.items()},
        "jail_mounts": inside.jail_mounts(),
        "consoles": inside.console_pids(),
        "homes": inside.home_checksums(),
        "media": inside.ivle_conf_media_version(),
        "template_version": (inside.TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip()
        if (inside.TEMPLATE / "usr/lib/ivle/VERSION").exists() else "",
        "dumps": [str(p) for p in inside.BACKUPS.rglob("*") if p.is_file()],
        "themes": dict(inside.query("SELECT login, theme FROM login"))  # type: ignore[arg-type]
        if "20100301-01" in rows and rows["20100301-01"][0] != "baseline" else {},
        "schema_same": (inside.schema_dump() == json.loads(BEFORE.read_text())["schema"])
        if BEFORE.exists() and "schema" in json.loads(BEFORE.read_text()) else None,
    }


def main(argv: list[str]) -> int:
    inside.print = lambda *a, **k: print(*a, **{**k, "file": sys.stderr})  # type: ignore[attr-defined]
    if argv[:1] == ["setup"]:
        return setup(*argv[1:])
    if argv[:1] == ["setup-cluster"]:
        return setup_cluster(*argv[1:])
    if argv[:1] == ["facts"]:
        print(json.dumps(facts()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
