"""The stand-in IVLE package for booted nodes, built by dpkg-buildpackage.

Unlike scripts/e2e/standin.py (dpkg-deb, #DEBHELPER# imitated), this is a
real source package: debhelper compat 13, `dh $@`, the init script of
ivle-usrmgt-server installed by dh_installinit (so debhelper's own
start/stop/restart snippets run), maintainer scripts that are ivle-maint's
lines from scripts/ivle-hooks, an Apache site and a mod_python web
application.  What it shares with the chroot stand-in (programs from
tests/fakes, schema, migrations) comes from there.

The web application and the user management server each need a column
that their version's migrations add (1.0: login.email; 1.1: login.theme):
new code on the old schema answers 500, and usrmgt's init script refuses
to start, as IVLE would fail.  Every page carries `[media] version` of
ivle.conf in its asset URL; the asset answers 404 for any other version.

`debian/rules` variants:
- fixed (what IVLE's rules must say): `dh_installinit --no-stop-on-upgrade
  --no-restart-after-upgrade`: debhelper's postinst only `start`s usrmgt
  (a no-op, the old server still runs), so ivle-maint's restart-usrmgt step,
  after the migrations, is the restart;
- trap: plain dh_installinit (compat 13 default: `restart` in the postinst,
  at debhelper's marker), and the postinst's ivle-maint line written below
  the marker (TRAP_POSTINST, where a line is naturally added to an existing
  script): the new usrmgt would start on the old schema before ivle-maint
  runs, so the preinst's preflight refuses the upgrade
  (ivle_maint/services/early_calls.py);
- unit: fixed, and the package also ships a native systemd unit for usrmgt
  (lintian asks for one), installed by dh_installsystemd with the same
  options: its postinst snippet only `start`s the unit, so usrmgt still
  restarts once, by ivle-maint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "scripts" / "e2e"))

import standin as chroot_standin  # noqa: E402

HOOKS = REPO / "scripts" / "ivle-hooks"
FAKES = REPO / "tests" / "fakes"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The column each version's code reads (added by that version's migrations).
NEEDS = {"1.0": "email", "1.1": "theme"}
# The changelog's date is every shipped file's mtime (SOURCE_DATE_EPOCH):
# each version needs its own, or a byte-code cache written by the old code
# (same size, same mtime) would still be taken as valid for the new.
CHANGELOG_DATES = {"1.0": "Thu, 01 Jan 2026 00:00:00 +0000",
                   "1.1": "Sun, 01 Feb 2026 00:00:00 +0000"}

USRMGT_INIT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          ivle-usrmgt-server
# Required-Start:    $local_fs $remote_fs $network $syslog
# Required-Stop:     $local_fs $remote_fs $network $syslog
# Should-Start:      postgresql
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: IVLE user management server (stand-in)
### END INIT INFO
# Refuses to start when the database lacks what this version's code needs.
DAEMON=/usr/lib/ivle/services/usrmgt-server
PIDFILE=/run/ivle-usrmgt-server.pid
. /lib/lsb/init-functions

case "$1" in
    start)
        log_daemon_msg "Starting IVLE user management server" ivle-usrmgt-server
        if ! /usr/bin/python3 "$DAEMON" --check-schema; then
            log_end_msg 1
            exit 1
        fi
        start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" \\
            --startas /usr/bin/python3 -- "$DAEMON"
        log_end_msg $?
        ;;
    stop)
        log_daemon_msg "Stopping IVLE user management server" ivle-usrmgt-server
        start-stop-daemon --stop --quiet --retry TERM/10/KILL/5 --pidfile "$PIDFILE" \\
            --remove-pidfile
        status=$?
        [ "$status" = 1 ] && status=0  # was not running
        log_end_msg "$status"
        ;;
    restart|force-reload)
        "$0" stop && "$0" start
        ;;
    status)
        status_of_proc -p "$PIDFILE" /usr/bin/python3 ivle-usrmgt-server
        ;;
    *)
        echo "Usage: $0 {start|stop|restart|force-reload|status}" >&2
        exit 3
        ;;
esac
"""

# Shared by the web application and usrmgt: ivle.conf and the database.
IVLEDB_PY = '''\
"""ivle.conf and the database, as this version of the stand-in reads them."""
import psycopg2
from configobj import ConfigObj

VERSION = "{version}"
NEEDS = "{needs}"  # the login column this version's code reads


def conf():
    return ConfigObj("/etc/ivle/ivle.conf", interpolation=False)


def connect(c):
    db = c["database"]
    return psycopg2.connect(host=db["host"], port=int(db["port"]), dbname=db["name"],
                            user=db["username"], password=db["password"], connect_timeout=5)


def users(c):
    """(count, a value of NEEDS): fails on a schema without NEEDS."""
    conn = connect(c)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), max(%s) FROM login" % NEEDS)
            return cur.fetchone()
    finally:
        conn.close()
'''

# A mod_python handler.  As IVLE's dispatch module does, it imports its
# libraries and reads ivle.conf when it is imported, once per Apache
# process: a new media version is seen after Apache restarts.
WEB_PY = '''\
"""IVLE stand-in web application (mod_python handler)."""
import sys

sys.path.insert(0, "/usr/lib/ivle/lib")
import ivledb
from mod_python import apache

CONF = ivledb.conf()
MEDIA = CONF["media"]["version"]


def handler(req):
    if req.uri.startswith("/media/"):
        if req.uri.split("/")[2:3] != [MEDIA]:
            return apache.HTTP_NOT_FOUND
        req.content_type = "text/css"
        req.write("body {{ font-family: sans-serif; }}\\n")
        return apache.OK
    count, _value = ivledb.users(CONF)  # an old schema raises: Apache answers 500
    req.content_type = "text/html; charset=utf-8"
    req.headers_out["Cache-Control"] = "no-store"
    req.write('<!DOCTYPE html><html><head><meta name="ivle-version" content="%s">'
              '<link rel="stylesheet" href="/media/%s/ivle.css"></head>'
              '<body>IVLE %s: %d users</body></html>\\n' % (ivledb.VERSION, MEDIA,
                                                           ivledb.VERSION, count))
    return apache.OK
'''

USRMGT_PY = '''\
#!/usr/bin/python3
"""IVLE stand-in user management server: answers its version on [usrmgt] port."""
import socketserver
import sys

sys.path.insert(0, "/usr/lib/ivle/lib")
import ivledb


class Answer(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(("ivle-usrmgt-server %s\\n" % ivledb.VERSION).encode())


def main():
    conf = ivledb.conf()
    try:
        ivledb.users(conf)
    except Exception as exc:
        print("ivle-usrmgt-server %s: database not usable: %s"
              % (ivledb.VERSION, str(exc).strip()), file=sys.stderr)
        return 1
    if sys.argv[1:] == ["--check-schema"]:
        return 0
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.TCPServer(("127.0.0.1", int(conf["usrmgt"]["port"])), Answer) as srv:
        srv.serve_forever()
    return 0


sys.exit(main())
'''

# mod_python imports a handler on a child's first request.  Under Apache's
# threaded MPM (Debian's default) two first requests at once race: the
# second finds the module half-imported ("contains no 'handler'"), or a
# second interpreter of the same name whose psycopg2 import fails ("cannot
# import name 'encodings'") in every later request of that child: 500s that
# any Apache start causes, upgrade or not.  PythonImport imports the
# application as each child starts, before it serves, in the interpreter the
# site names (doc/operations.md says so to IVLE's administrators).
APACHE_SITE = """\
# IVLE stand-in site (booted-node tests).  Enabled with a2ensite ivle.
PythonPath "['/usr/lib/ivle/web'] + sys.path"
PythonImport ivleweb ivle
<VirtualHost *:*>
    PythonInterpreter ivle
    PythonPath "['/usr/lib/ivle/web'] + sys.path"
    PythonAutoReload Off
    <Location />
        SetHandler mod_python
        PythonHandler ivleweb
    </Location>
</VirtualHost>
"""

CONTROL = """\
Source: ivle
Section: web
Priority: optional
Maintainer: ivle-maint booted-node tests <root@localhost>
Build-Depends: debhelper-compat (= 13)
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: ivle
Architecture: all
Pre-Depends: ivle-maint, ${misc:Pre-Depends}
Depends: apache2, libapache2-mod-python, python-is-python3, python3, python3-configobj,
         python3-psycopg2, rsync, ${misc:Depends}
Description: stand-in IVLE for ivle-maint's booted-node tests
 Ships stand-ins of IVLE's programs, database patches, its user management
 server's init script, an Apache site and a mod_python application.
"""

RULES_FIXED = """\
#!/usr/bin/make -f
%:
\tdh $@

override_dh_auto_install:
\tcp -a root/. debian/ivle/

# ivle-maint restarts ivle-usrmgt-server after the migrations (IVLE's
# procedure); debhelper must neither stop it before the upgrade nor restart
# it on the new code before ivle-maint has migrated the database.
override_dh_installinit:
\tdh_installinit --name=ivle-usrmgt-server --no-stop-on-upgrade --no-restart-after-upgrade
"""

RULES_TRAP = """\
#!/usr/bin/make -f
%:
\tdh $@

override_dh_auto_install:
\tcp -a root/. debian/ivle/

# debhelper's default (compat 13): restart after upgrade, in the postinst at
# #DEBHELPER#, i.e. before ivle-maint's line.
override_dh_installinit:
\tdh_installinit --name=ivle-usrmgt-server
"""

# Both tools with the options: dh_installsystemd's compat 13 default would
# restart the unit in the postinst after ivle-maint did (a second restart).
RULES_UNIT = RULES_FIXED + """
override_dh_installsystemd:
\tdh_installsystemd --name=ivle-usrmgt-server --no-stop-on-upgrade --no-restart-after-upgrade
"""

# The native unit beside the init script; the schema check and the pid file
# as the init script has them (guest.py reads the pid file).
USRMGT_UNIT = """\
[Unit]
Description=IVLE user management server (stand-in unit)
After=network.target postgresql.service

[Service]
ExecStartPre=/usr/bin/python3 /usr/lib/ivle/services/usrmgt-server --check-schema
ExecStart=/usr/bin/python3 /usr/lib/ivle/services/usrmgt-server
ExecStartPost=/bin/sh -c 'echo $$MAINPID > /run/ivle-usrmgt-server.pid'
ExecStopPost=/bin/rm -f /run/ivle-usrmgt-server.pid

[Install]
WantedBy=multi-user.target
"""

PLAIN_SCRIPT = "#!/bin/sh\nset -e\n\n#DEBHELPER#\n\nexit 0\n"
# The trap's postinst: ivle-maint's line added below debhelper's.
TRAP_POSTINST = '#!/bin/sh\nset -e\n\n#DEBHELPER#\n\nivle-maint hook postinst "$@"\n\nexit 0\n'


@dataclass
class Spec:
    """One build: version, migrations, which rules, a name for the variant."""

    version: str
    migrations: dict[str, str] = field(default_factory=dict)
    rules: str = RULES_FIXED
    variant: str = ""
    hooks: bool = True  # False: no ivle-maint lines (upgraded by hand, as IVLE's docs say)
    unit: bool = False  # True: a native systemd unit for usrmgt too (RULES_UNIT)


def version_a(rules: str = RULES_FIXED) -> Spec:
    return Spec("1.0", dict(chroot_standin.MIGRATIONS_A), rules)


def version_b(rules: str = RULES_FIXED) -> Spec:
    return Spec("1.1", {**chroot_standin.MIGRATIONS_A, **chroot_standin.MIGRATIONS_B_NEW}, rules)


def version_b_bad_migration() -> Spec:
    bad_key, bad_sql = chroot_standin.BAD_MIGRATION
    return Spec("1.1", {**version_b().migrations, bad_key: bad_sql}, variant="badmigration")


# 1.1 with additive migrations only (the column without rewriting any row):
# a rollback from it is code only.
ADDITIVE_FIRST = """\
BEGIN;
ALTER TABLE login ADD COLUMN theme VARCHAR NOT NULL DEFAULT 'light';
COMMIT;
"""


def version_b_additive() -> Spec:
    return Spec("1.1", {**version_b().migrations, "20100301-01.sql": ADDITIVE_FIRST},
                variant="additive")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def source_tree(spec: Spec, src: Path) -> None:
    """IVLE's source package as a maintainer would lay it out."""
    root = src / "root"
    fakes = root / chroot_standin.FAKES_DIR
    for name in (*chroot_standin.FAKE_PROGRAMS, "python-console", "_fakelib.py"):
        _write(fakes / name, (FAKES / name).read_text(), 0o644 if name.endswith(".py") else 0o755)
    (root / "usr/bin").mkdir(parents=True)
    for prog in chroot_standin.FAKE_PROGRAMS:
        (root / "usr/bin" / prog).symlink_to(f"../share/ivle-fakes/{prog}")
    share = root / "usr/share/ivle"
    _write(share / "VERSION", f"{spec.version}\n")
    _write(share / "services/python-console", (FAKES / "python-console").read_text(), 0o755)
    _write(share / "userdb/users.sql", chroot_standin.USERS_SQL)
    _write(share / "userdb/migrations/README", chroot_standin.MIGRATIONS_README)
    for name, sql in spec.migrations.items():
        _write(share / "userdb/migrations" / name, sql)
    lib = root / "usr/lib/ivle"
    _write(lib / "VERSION", f"{spec.version}\n")
    _write(lib / "ivle/console.py",
           f'"""IVLE console support, version {spec.version}."""\nVERSION = "{spec.version}"\n')
    _write(lib / "lib/ivledb.py", IVLEDB_PY.format(version=spec.version, needs=NEEDS[spec.version]))
    _write(lib / "web/ivleweb.py", WEB_PY.format())
    _write(lib / "services/usrmgt-server", USRMGT_PY, 0o755)
    _write(root / "etc/apache2/sites-available/ivle.conf", APACHE_SITE)

    debian = src / "debian"
    _write(debian / "control", CONTROL)
    _write(debian / "rules", spec.rules, 0o755)
    _write(debian / "source/format", "3.0 (native)\n")
    _write(debian / "changelog",
           f"ivle ({spec.version}) unstable; urgency=medium\n\n"
           f"  * Stand-in {spec.version}{' (' + spec.variant + ')' if spec.variant else ''}.\n\n"
           f" -- ivle-maint booted-node tests <root@localhost>  {CHANGELOG_DATES[spec.version]}\n")
    _write(debian / "ivle.ivle-usrmgt-server.init", USRMGT_INIT, 0o755)
    if spec.unit:
        _write(debian / "ivle.ivle-usrmgt-server.service", USRMGT_UNIT)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        text = (HOOKS / script).read_text() if spec.hooks else PLAIN_SCRIPT
        if spec.hooks and script == "postinst" and spec.rules == RULES_TRAP:
            text = TRAP_POSTINST
        _write(debian / f"ivle.{script}", text, 0o755)


def build(spec: Spec, out_dir: Path) -> Path:
    """dpkg-buildpackage -b; returns the .deb (moved into out_dir)."""
    with tempfile.TemporaryDirectory(prefix="ivle-standin-") as tmp:
        src = Path(tmp) / f"ivle-{spec.version}"
        source_tree(spec, src)
        done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": "/root"},
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"dpkg-buildpackage failed:\n{done.stdout[-3000:]}"
                               f"{done.stderr[-3000:]}")
        deb = next(Path(tmp).glob("ivle_*_all.deb"))
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(deb), out_dir / deb.name))


def publish(repo: Path, debs: list[Path]) -> None:
    """A flat apt repository (apt-ftparchive) holding exactly these .debs."""
    repo.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copyfile(deb, repo / deb.name)
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8"}
    for what, name in (("packages", "Packages"), ("release", "Release")):
        done = subprocess.run(["apt-ftparchive", what, "."], cwd=repo, capture_output=True,
                              text=True, check=True, env=env)
        (repo / name).write_text(done.stdout)
    repo.chmod(0o755)


def with_migrations(spec: Spec, more: dict[str, str]) -> Spec:
    """spec shipping these migrations too (benchmarks: an IVLE-sized release)."""
    return Spec(**{**spec.__dict__, "migrations": {**spec.migrations, **more}})


def by_hand(spec: Spec) -> Spec:
    """spec without ivle-maint's lines: upgraded by IVLE's documented commands."""
    return Spec(**{**spec.__dict__, "hooks": False})


def repositories(out: Path, ivle_maint_deb: Path, only: list[str] | None = None,
                 more: dict[str, tuple[Spec, Spec]] | None = None) -> dict[str, Path]:
    """The apt repositories the scenarios use, each with ivle-maint and two ivle versions.

    good: 1.0 and 1.1; badmigration: 1.0 and a 1.1 whose first new migration
    fails; additive: 1.0 and a 1.1 whose migrations are all additive;
    trap: 1.0 and 1.1 built with debhelper's default dh_installinit;
    unit: 1.0 and 1.1 with a native unit for usrmgt (RULES_UNIT);
    manual: 1.0 and 1.1 without ivle-maint's lines (the benchmark's twin,
    upgraded by IVLE's documented commands).  only: just these (all by
    default); more: further repositories by name (the benchmarks' sizes).
    """
    built = out / "debs"
    plan = {
        "good": (version_a(), version_b()),
        "badmigration": (version_a(), version_b_bad_migration()),
        "additive": (version_a(), version_b_additive()),
        "trap": (version_a(RULES_TRAP), version_b(RULES_TRAP)),
        "unit": (Spec(**{**version_a(RULES_UNIT).__dict__, "unit": True}),
                 Spec(**{**version_b(RULES_UNIT).__dict__, "unit": True})),
        "manual": (by_hand(version_a()), by_hand(version_b())),
    }
    if only is not None:
        plan = {name: plan[name] for name in only}
    plan.update(more or {})
    repos = {}
    for name, specs in plan.items():
        debs = [build(spec, built / name) for spec in specs]
        publish(out / name, [ivle_maint_deb, *debs])
        repos[name] = out / name
    return repos


if __name__ == "__main__":
    target = Path(sys.argv[1])
    deb = build(version_b(), target)
    print(deb)
    print(subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                         check=False).stdout)
