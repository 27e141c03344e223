"""Stand-in `ivle` packages for the end-to-end test, built by dpkg-buildpackage.

A stand-in ships what the upgrade procedure touches, at IVLE's packaged
paths: the stand-in programs from tests/fakes (ivle-mountallusers,
ivle-buildjail, ivle-remakeuser on PATH, python-console under
/usr/share/ivle/services), the database schema and migrations under
/usr/share/ivle/userdb, the code copied into the jail (/usr/lib/ivle) and
init scripts for apache2 and ivle-usrmgt-server.  It is built as IVLE's
package is: debhelper compat 13 with the dh-ivle-maint add-on (the build
dependency dh-sequence-ivle-maint), so its maintainer scripts and its
Pre-Depends are what dh_ivle_maint and dh_installinit generate.

Nothing here is IVLE's code; the SQL is written for this test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
FAKE_PROGRAMS = ("ivle-mountallusers", "ivle-buildjail", "ivle-remakeuser")
FAKES_DIR = "usr/share/ivle-fakes"  # where the stand-ins live in the package
SERVICES = {"apache2": 8080, "ivle-usrmgt-server": 2178}

# A fresh database of any version starts from users.sql and then has every
# migration applied in name order (the e2e setup does that for version A).
USERS_SQL = """\
-- Schema of a fresh IVLE database (stand-in for the e2e test).
CREATE TABLE login (
    loginid   SERIAL PRIMARY KEY,
    login     VARCHAR UNIQUE NOT NULL,
    unixid    INT UNIQUE NOT NULL,
    state     VARCHAR NOT NULL DEFAULT 'enabled',
    admin     BOOLEAN NOT NULL DEFAULT false,
    nick      VARCHAR NOT NULL,
    fullname  VARCHAR NOT NULL
);
CREATE TABLE subject (
    subjectid SERIAL PRIMARY KEY,
    subj_code VARCHAR UNIQUE NOT NULL
);
"""

MIGRATIONS_README = "Database patches, applied in name order.  This README is not one.\n"

# Version A's migrations: already applied when the e2e node is set up.
MIGRATIONS_A = {
    "20090101-01.sql": """\
BEGIN;
CREATE TABLE offering (
    offeringid SERIAL PRIMARY KEY,
    subject    INT NOT NULL REFERENCES subject (subjectid),
    year       VARCHAR(4) NOT NULL
);
COMMIT;
""",
    "20090101-02.sql": """\
BEGIN;
ALTER TABLE login ADD COLUMN email VARCHAR;
COMMIT;
""",
    "20090215.sql": """\
-- No transaction statements in this one.
CREATE INDEX login_state_idx ON login (state);
""",
}

# Version B adds two: one in BEGIN/COMMIT, one bare with a $$ function.
MIGRATIONS_B_NEW = {
    "20100301-01.sql": """\
BEGIN;
ALTER TABLE login ADD COLUMN theme VARCHAR NOT NULL DEFAULT 'light';
UPDATE login SET theme = 'dark' WHERE admin;
COMMIT;
""",
    "20100301-02.sql": """\
CREATE TABLE note (
    noteid  SERIAL PRIMARY KEY,
    loginid INT NOT NULL REFERENCES login (loginid) ON DELETE CASCADE,
    body    TEXT NOT NULL
);
CREATE FUNCTION note_greeting() RETURNS trigger AS $$
BEGIN
    NEW.body := E'hello,\\t' || NEW.body || '; welcome';
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
""",
}

# The broken first migration of B: its second statement fails, so the
# transaction leaves the database exactly as it was.
BAD_MIGRATION = (
    "20100301-01.sql",
    """\
BEGIN;
ALTER TABLE login ADD COLUMN theme VARCHAR NOT NULL DEFAULT 'light';
UPDATE no_such_table SET theme = 'dark';
COMMIT;
""",
)

INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:    $local_fs $remote_fs $network
# Required-Stop:     $local_fs $remote_fs $network
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {name} stand-in (ivle-maint end-to-end test)
### END INIT INFO
# Events go to /var/log/services.log; see {fakes}/initd-service.
PORT={port}
# As Debian's init scripts do: the administrator's settings (the cluster
# scenario gives each slave its own web port).
[ -r /etc/default/{name} ] && . /etc/default/{name}
exec /usr/bin/python3 /{fakes}/initd-service --root / --port "$PORT" {name} "$@"
"""

# IVLE 1.1's user management server needs 1.1's schema, as IVLE's would: its
# init script refuses to start on the old one.  So a postinst that ran
# dh_installinit's start/restart before ivle-maint's migrations would fail.
SCHEMA_READY = """\
#!/usr/bin/python3
\"\"\"Exit 0 when IVLE's database has table ARGV[1] (stand-in schema check).\"\"\"
import os
import sys

import psycopg2
from configobj import ConfigObj

db = ConfigObj(os.path.join(os.environ.get("IVLECONF", "/etc/ivle"), "ivle.conf"))["database"]
conn = psycopg2.connect(host=db["host"], port=int(db["port"]), dbname=db["name"],
                        user=db["username"], password=db["password"])
with conn.cursor() as cur:
    cur.execute("SELECT to_regclass(%s)", (sys.argv[1],))
    sys.exit(0 if cur.fetchone()[0] else 1)
"""
NEEDS_TABLE = """\
case "$1" in start|restart|force-reload)
    if ! /usr/bin/python3 /{fakes}/schema-ready {table}; then
        echo "{name}: IVLE {version} needs table {table}: migrate the database first" >&2
        exit 1
    fi ;;
esac
"""

DEBIAN_CONTROL = """\
Source: ivle
Section: web
Priority: optional
Maintainer: ivle-maint end-to-end test <root@localhost>
Build-Depends: debhelper-compat (= 13), dh-sequence-ivle-maint
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: ivle
Architecture: all
Pre-Depends: ${{misc:Pre-Depends}}
Depends: python3, python3-configobj, python3-psycopg2, python-is-python3, rsync,
 ${{misc:Depends}}
Description: stand-in IVLE for ivle-maint's end-to-end test
 Ships the stand-ins of IVLE's programs, database patches and init scripts
 at IVLE's paths; built with dh_ivle_maint, which calls ivle-maint from its
 maintainer scripts.
"""

CHANGELOG = """\
ivle ({version}) unstable; urgency=medium

  * Stand-in IVLE {version} for ivle-maint's end-to-end test.

 -- ivle-maint end-to-end test <root@localhost>  Tue, 24 Nov 2026 21:00:00 +0000
"""

# As IVLE's debian/rules must say (doc/package-maintainer.md): the
# user management server is restarted by ivle-maint after the migrations,
# so dh_installinit neither stops it before the upgrade nor restarts it
# after; it only enables it (and starts it on a fresh install).  apache2's
# script stands in for the apache2 package's: only enabled here.
RULES = """\
#!/usr/bin/make -f
%:
\tdh $@

override_dh_installinit:
\tdh_installinit --name=ivle-usrmgt-server --no-stop-on-upgrade --no-restart-after-upgrade
\tdh_installinit --name=apache2 --no-start
"""

# IVLE's own scripts; #DEBHELPER# gets dh_ivle_maint's and dh_installinit's lines.
PRERM = """\
#!/bin/sh
set -e
# what py3clean does for a package: the stand-ins' byte-code goes too
rm -rf /usr/share/ivle-fakes/__pycache__
#DEBHELPER#
exit 0
"""
FAILING_PREINST = """\
#!/bin/sh
set -e
#DEBHELPER#
echo "ivle preinst: injected failure (end-to-end test)" >&2
exit 1
"""


@dataclass
class Version:
    """One stand-in build: the version, its migrations, how it is broken."""

    version: str
    migrations: dict[str, str] = field(default_factory=dict)
    preinst_fails: bool = False
    name: str = ""  # file name suffix, for broken variants
    # A table usrmgt's init script needs before it starts ("": none).
    needs_table: str = ""

    @property
    def jail_file(self) -> str:
        """/usr/lib/ivle/ivle/console.py: copied into the jail; changes every version."""
        return f'"""IVLE console support, version {self.version}."""\nVERSION = "{self.version}"\n'


def version_a() -> Version:
    return Version("1.0", dict(MIGRATIONS_A))


NEW_TABLE = "note"  # made by 20100301-02.sql


def version_b() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW}, needs_table=NEW_TABLE)


def version_b_bad_migration() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW, BAD_MIGRATION[0]: BAD_MIGRATION[1]},
                   name="badmigration", needs_table=NEW_TABLE)


# A migration ivle-maint's checks refuse (it cannot run in a transaction and
# its header does not opt out): the preinst's preflight must see it.
REFUSED_MIGRATION = (
    "20100302-01.sql", "CREATE INDEX CONCURRENTLY login_nick_idx ON login (nick);\n",
)


def version_b_refused_migration() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW,
                           REFUSED_MIGRATION[0]: REFUSED_MIGRATION[1]},
                   name="badsql", needs_table=NEW_TABLE)


def version_b_bad_preinst() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW}, preinst_fails=True,
                   name="badpreinst", needs_table=NEW_TABLE)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _payload(spec: Version, tree: Path) -> None:
    """The files the package installs, under TREE."""
    fakes = tree / FAKES_DIR
    fakes.mkdir(parents=True)
    for name in (*FAKE_PROGRAMS, "initd-service", "python-console", "_fakelib.py"):
        shutil.copyfile(FAKES / name, fakes / name)
        (fakes / name).chmod(0o644 if name.endswith(".py") else 0o755)
    _write(fakes / "schema-ready", SCHEMA_READY, 0o755)
    (tree / "usr/bin").mkdir(parents=True)
    for prog in FAKE_PROGRAMS:
        (tree / "usr/bin" / prog).symlink_to(f"../share/ivle-fakes/{prog}")
    share = tree / "usr/share/ivle"
    _write(share / "VERSION", f"{spec.version}\n")
    _write(share / "services/python-console", (FAKES / "python-console").read_text(), 0o755)
    _write(share / "userdb/users.sql", USERS_SQL)
    _write(share / "userdb/migrations/README", MIGRATIONS_README)
    for name, sql in spec.migrations.items():
        _write(share / "userdb/migrations" / name, sql)
    _write(tree / "usr/lib/ivle/VERSION", f"{spec.version}\n")
    _write(tree / "usr/lib/ivle/ivle/console.py", spec.jail_file)


def init_script(name: str, spec: Version) -> str:
    text = INIT_SCRIPT.format(name=name, port=SERVICES[name], fakes=FAKES_DIR)
    if name == "ivle-usrmgt-server" and spec.needs_table:
        check = NEEDS_TABLE.format(name=name, fakes=FAKES_DIR, table=spec.needs_table,
                                   version=spec.version)
        text = text.replace("exec /usr/bin/python3", check + "exec /usr/bin/python3")
    return text


def build(spec: Version, out_dir: Path, addon: Path) -> Path:
    """Build ivle_VERSION[_NAME]_all.deb in out_dir with dpkg-buildpackage; returns its path.

    ADDON: dh-ivle-maint's files (its .deb unpacked), found through PATH,
    PERL5LIB and DH_AUTOSCRIPTDIR, so the host needs no ivle-maint package
    installed (hence -d: the build dependency dh-sequence-ivle-maint is
    provided by those files, not by an installed package).
    """
    stem = f"ivle_{spec.version}" + (f"_{spec.name}" if spec.name else "") + "_all"
    work = out_dir / f"{stem}.build"
    if work.exists():
        shutil.rmtree(work)
    source = work / f"ivle-{spec.version}"
    _payload(spec, source / "payload")
    debian = source / "debian"
    _write(debian / "control", DEBIAN_CONTROL.format())
    _write(debian / "changelog", CHANGELOG.format(version=spec.version))
    _write(debian / "rules", RULES, 0o755)
    _write(debian / "source/format", "3.0 (native)\n")
    _write(debian / "ivle.install", "payload/usr /\n")
    _write(debian / "ivle.prerm", PRERM, 0o755)
    if spec.preinst_fails:
        _write(debian / "ivle.preinst", FAILING_PREINST, 0o755)
    for name in SERVICES:
        _write(debian / f"ivle.{name}.init", init_script(name, spec), 0o755)
    env = {
        "PATH": f"{addon}/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PERL5LIB": str(addon / "usr/share/perl5"),
        "DH_AUTOSCRIPTDIR": str(addon / "usr/share/debhelper/autoscripts"),
        "LANG": "C.UTF-8", "HOME": str(work), "SOURCE_DATE_EPOCH": "1795467600",
    }
    done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b", "-d"], cwd=source, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dpkg-buildpackage of {stem} failed:\n{done.stdout[-4000:]}")
    deb = out_dir / f"{stem}.deb"
    (work / f"ivle_{spec.version}_all.deb").rename(deb)
    shutil.rmtree(work)
    return deb


def unpack_addon(deb: Path, into: Path) -> Path:
    """dh-ivle-maint's .deb unpacked into INTO (for build's ADDON)."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def rebuild_with_version(deb: Path, version: str, out_dir: Path) -> Path:
    """A copy of a binary package with another version (for upgrade tests)."""
    tree = out_dir / f"{deb.stem}.repack"
    if tree.exists():
        shutil.rmtree(tree)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    control.write_text("\n".join(
        f"Version: {version}" if line.startswith("Version:") else line for line in lines
    ) + "\n")
    package = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Package:"))
    out = out_dir / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return out
