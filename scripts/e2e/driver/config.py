"""The chroot's paths, the database, the users and the settings files."""

from __future__ import annotations

import os
from pathlib import Path

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
