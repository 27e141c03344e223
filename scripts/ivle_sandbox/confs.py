"""The configuration files of a sandbox node.

ivle.conf is written as text, the way an administrator keeps it: a header,
comments above keys, an inline comment, ${} templates.  Tests that check
"a rewrite preserves comments" need exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from configobj import ConfigObj

IVLE_CONF = """\
# IVLE configuration for the sandbox node in {root}
# Maintained by hand: keep the comments when editing.

[paths]
# Where IVLE is installed (setup.py install --prefix).
prefix = {root}/usr
data = {root}/var/lib/ivle
share = ${{prefix}}/share/ivle
lib = ${{prefix}}/lib/ivle

    [[jails]]
    # Each user's jail is mounted here while they use the console.
    mounts = ${{data}}/jailmounts
    src = ${{data}}/jails
    template = ${{src}}/__base__
    template_build = ${{src}}/__base_build__
{media}
[database]
host = 127.0.0.1
port = {db_port}
name = {db_name}
username = {db_user}
password = {db_password}

[usrmgt]
host = 127.0.0.1
port = {usrmgt_port}    # the user management server on the master
magic = {usrmgt_magic}

[jail]
suite = bookworm
mirror = http://deb.debian.org/debian
devmode = False
"""

MEDIA = """
[media]
# Bump on every upgrade so browsers fetch new media (same on all slaves).
version = {version}
"""

MAINT_CONF = """\
# ivle-maint settings for the sandbox node in {root}

[node]
role = {role}
name = sandbox

[paths]
ivle_conf_dir = {root}/etc/ivle
migrations = {migrations}
state = {root}/var/lib/ivle-maint
log = {root}/var/log/ivle-maint
backup = {root}/var/backups/ivle-maint
run = {root}/run/ivle-maint

[services]
backend = init.d
initd_dir = {root}/etc/init.d
timeout = 15

[commands]
mountallusers = {fakes}/ivle-mountallusers
buildjail = {fakes}/ivle-buildjail
remakeuser = {fakes}/ivle-remakeuser

[consoles]
term_timeout = 2

[web]
# The node's own: ivle-maint writes its Apache confs here (never the host's).
apache_dir = {root}/etc/apache2

[database]
socket_dir = {socket_dir}
"""


def write_ivle_conf(path: Path, *, root: Path, media_version: str | None,
                    db: Mapping[str, Any], usrmgt_port: int, usrmgt_magic: str) -> None:
    media = MEDIA.format(version=media_version) if media_version is not None else ""
    path.write_text(
        IVLE_CONF.format(
            root=root, media=media, db_port=db["port"], db_name=db["name"],
            db_user=db["username"], db_password=db["password"],
            usrmgt_port=usrmgt_port, usrmgt_magic=usrmgt_magic,
        )
    )
    path.chmod(0o640)  # it holds the database password


def write_maint_conf(path: Path, *, root: Path, role: str, migrations: Path,
                     fakes: Path, socket_dir: Path) -> None:
    path.write_text(
        MAINT_CONF.format(
            root=root, role=role, migrations=migrations, fakes=fakes, socket_dir=socket_dir
        )
    )


def update_fakes_conf(path: Path, section: str, values: Mapping[str, Any]) -> None:
    """Merge values into one section of fakes.conf (None deletes a key)."""
    conf = ConfigObj(str(path) if path.exists() else None)
    conf.filename = str(path)
    sect = conf.setdefault(section, {})
    for key, value in values.items():
        if value is None:
            sect.pop(key, None)
        elif isinstance(value, bool):
            sect[key] = "yes" if value else "no"
        elif isinstance(value, list | tuple):
            sect[key] = [str(v) for v in value]
        else:
            sect[key] = str(value)
    conf.write()
