"""Stand-in `ivle` packages for the end-to-end test, built with dpkg-deb.

A stand-in ships what the upgrade procedure touches, at IVLE's packaged
paths: the stand-in programs from tests/fakes (ivle-mountallusers,
ivle-buildjail, ivle-remakeuser on PATH, python-console under
/usr/share/ivle/services), the database schema and migrations under
/usr/share/ivle/userdb, the code copied into the jail (/usr/lib/ivle) and
init scripts for apache2 and ivle-usrmgt-server.  Its maintainer scripts
are ivle-maint's snippets (scripts/ivle-hooks), with #DEBHELPER# replaced
by what dh_installinit would add, and it Pre-Depends on ivle-maint.

Nothing here is IVLE's code; the SQL is written for this test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
HOOKS = REPO / "scripts" / "ivle-hooks"
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
CREATE FUNCTION greeting(who text) RETURNS text AS $$
    SELECT E'hello,\\t' || who || '; welcome';
$$ LANGUAGE sql;
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

# What dh_installinit would put at #DEBHELPER# for the two init scripts.
DEBHELPER = {
    "postinst": """\
if [ "$1" = configure ] || [ "$1" = abort-upgrade ]; then
    update-rc.d apache2 defaults >/dev/null
    update-rc.d ivle-usrmgt-server defaults >/dev/null
fi""",
    "prerm": """\
# what py3clean does for a package: the stand-ins' byte-code goes too
rm -rf /usr/share/ivle-fakes/__pycache__""",
    "postrm": """\
if [ "$1" = purge ]; then
    update-rc.d apache2 remove >/dev/null
    update-rc.d ivle-usrmgt-server remove >/dev/null
fi""",
}

CONTROL = """\
Package: ivle
Version: {version}
Architecture: all
Maintainer: ivle-maint end-to-end test <root@localhost>
Pre-Depends: ivle-maint
Depends: python3, python3-configobj, python3-psycopg2, python-is-python3, rsync
Section: web
Priority: optional
Description: stand-in IVLE for ivle-maint's end-to-end test
 Ships the stand-ins of IVLE's programs, database patches and init scripts
 at IVLE's paths, with maintainer scripts that call ivle-maint.
"""


@dataclass
class Version:
    """One stand-in build: the version, its migrations, how it is broken."""

    version: str
    migrations: dict[str, str] = field(default_factory=dict)
    preinst_fails: bool = False
    name: str = ""  # file name suffix, for broken variants

    @property
    def jail_file(self) -> str:
        """/usr/lib/ivle/ivle/console.py: copied into the jail; changes every version."""
        return f'"""IVLE console support, version {self.version}."""\nVERSION = "{self.version}"\n'


def version_a() -> Version:
    return Version("1.0", dict(MIGRATIONS_A))


def version_b() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW})


def version_b_bad_migration() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW, BAD_MIGRATION[0]: BAD_MIGRATION[1]},
                   name="badmigration")


def version_b_bad_preinst() -> Version:
    return Version("1.1", {**MIGRATIONS_A, **MIGRATIONS_B_NEW}, preinst_fails=True,
                   name="badpreinst")


def maintainer_script(script: str, *, preinst_fails: bool = False) -> str:
    text = (HOOKS / script).read_text()
    text = text.replace("#DEBHELPER#", DEBHELPER.get(script, "# (no debhelper lines)"))
    if script == "preinst" and preinst_fails:
        # IVLE's own part of the preinst fails after ivle-maint's hook ran.
        text = text.replace(
            "\nexit 0\n",
            '\necho "ivle preinst: injected failure (end-to-end test)" >&2\nexit 1\n',
        )
    return text


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build(spec: Version, out_dir: Path) -> Path:
    """Build ivle_VERSION[_NAME]_all.deb in out_dir; returns its path."""
    stem = f"ivle_{spec.version}" + (f"_{spec.name}" if spec.name else "") + "_all"
    tree = out_dir / f"{stem}.tree"
    if tree.exists():
        shutil.rmtree(tree)
    fakes = tree / FAKES_DIR
    fakes.mkdir(parents=True)
    for name in (*FAKE_PROGRAMS, "initd-service", "python-console", "_fakelib.py"):
        shutil.copyfile(FAKES / name, fakes / name)
        (fakes / name).chmod(0o644 if name.endswith(".py") else 0o755)
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
    for name, port in SERVICES.items():
        _write(tree / "etc/init.d" / name,
               INIT_SCRIPT.format(name=name, port=port, fakes=FAKES_DIR), 0o755)
    debian = tree / "DEBIAN"
    _write(debian / "control", CONTROL.format(version=spec.version))
    for script in ("preinst", "postinst", "prerm", "postrm"):
        _write(debian / script, maintainer_script(script, preinst_fails=spec.preinst_fails),
               0o755)
    deb = out_dir / f"{stem}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return deb


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
