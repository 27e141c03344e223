"""Shared code of the IVLE stand-ins in this directory.

The stand-ins describe IVLE's behaviour (DESIGN.md, "Facts about IVLE");
none of IVLE's code is copied.  This directory is self-contained (standard
library, configobj, psycopg2) so it can be copied into a test chroot.

Control file: $IVLECONF/fakes.conf (configobj), one section per program;
every key is optional.  Shared keys:

    [ivle-buildjail]
    fail = yes            # fail (after a few lines of output)
    exit_code = 100       # the status on failure
    delay = 2.5           # seconds of "fixed work" before anything else
    delay_per_user = 0.01 # per user, for the programs that loop over users

Program-specific keys are documented at the top of each program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from configobj import ConfigObj

MS_RDONLY, MS_REMOUNT, MS_BIND = 0x1, 0x20, 0x1000
NS_ENV = "IVLE_SANDBOX_MNTNS"  # see scripts/ivle_sandbox/mountns.py

# IVLE's defaults for the keys the stand-ins read.
_DEFAULTS = {
    "prefix": "/usr/local",
    "data": "/var/lib/ivle",
    "share": "${prefix}/share/ivle",
    "lib": "${prefix}/lib/ivle",
}
_JAIL_DEFAULTS = {
    "mounts": "${data}/jailmounts",
    "src": "${data}/jails",
    "template": "${src}/__base__",
    "template_build": "${src}/__base_build__",
}


def say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


def require_root(prog: str) -> None:
    if os.geteuid() != 0:
        say(prog, "must be run as root")
        sys.exit(1)


def conf_dir() -> Path:
    return Path(os.environ.get("IVLECONF") or "/etc/ivle")


def load_ivle_conf(prog: str) -> ConfigObj:
    """ivle.conf with ${} interpolation and IVLE's path defaults filled in."""
    path = conf_dir() / "ivle.conf"
    if not path.exists():
        say(prog, f"{path}: no such file")
        sys.exit(1)
    conf = ConfigObj(str(path), interpolation="template")
    paths = conf.setdefault("paths", {})
    for key, value in _DEFAULTS.items():
        paths.setdefault(key, value)
    jails = paths.setdefault("jails", {})
    for key, value in _JAIL_DEFAULTS.items():
        jails.setdefault(key, value)
    return conf


def jail_paths(conf: ConfigObj) -> dict[str, Path]:
    jails = conf["paths"]["jails"]
    return {key: Path(jails[key]) for key in _JAIL_DEFAULTS}


def db_users(prog: str, conf: ConfigObj) -> list[tuple[str, int]]:
    """(login, unixid) of every user in the login table."""
    import psycopg2  # only the programs that need the database pay for it

    db = conf.get("database", {})
    try:
        conn = psycopg2.connect(
            host=db.get("host", "localhost"),
            port=int(db.get("port", 5432)),
            dbname=db.get("name", "ivle"),
            user=db.get("username"),
            password=db.get("password"),
        )
    except psycopg2.Error as exc:
        say(prog, f"cannot connect to the database: {str(exc).strip()}")
        sys.exit(1)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT login, unixid FROM login ORDER BY login")
            return [(login, int(unixid)) for login, unixid in cur.fetchall()]
    finally:
        conn.close()


def control(section: str) -> dict[str, Any]:
    """This program's section of $IVLECONF/fakes.conf (empty when absent)."""
    path = conf_dir() / "fakes.conf"
    if not path.exists():
        return {}
    return dict(ConfigObj(str(path)).get(section, {}))


def flag(ctl: dict[str, Any], key: str) -> bool:
    return str(ctl.get(key, "no")).lower() in ("yes", "true", "on", "1")


def as_list(ctl: dict[str, Any], key: str) -> list[str]:
    value = ctl.get(key, [])
    return [value] if isinstance(value, str) and value else list(value)


def delay(ctl: dict[str, Any], key: str = "delay") -> None:
    seconds = float(ctl.get(key, 0) or 0)
    if seconds > 0:
        time.sleep(seconds)


def mountpoints() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return {
            line.split()[4].encode().decode("unicode_escape").encode("latin-1").decode()
            for line in handle
        }


def require_private_namespace(prog: str) -> None:
    """Refuse to mount in the host's mount namespace (tests must not leak)."""
    mine = os.stat("/proc/self/ns/mnt").st_ino
    old, _, new = os.environ.get(NS_ENV, "").partition(":")
    if new == str(mine) and old != new:
        return
    try:
        same = os.stat("/proc/1/ns/mnt").st_ino == mine
    except PermissionError:
        # Mount IDs are global: a shared namespace shows the same ones.
        try:
            with open("/proc/1/mountinfo") as theirs, open("/proc/self/mountinfo") as ours:
                ids = {line.split()[0] for line in theirs}
                same = bool(ids & {line.split()[0] for line in ours})
        except OSError:
            same = True  # cannot tell: refuse
    if same:
        say(prog, "refusing to mount in the host's mount namespace (run under unshare -m)")
        sys.exit(1)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str | None, target: Path, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def mount_jail(paths: dict[str, Path], login: str) -> None:
    """Template read-only on mounts/LOGIN, then src/LOGIN/{home,tmp} on it."""
    jail = paths["mounts"] / login
    jail.mkdir(parents=True, exist_ok=True)
    _mount(str(paths["template"]), jail, MS_BIND)
    _mount(None, jail, MS_REMOUNT | MS_BIND | MS_RDONLY)
    _mount(str(paths["src"] / login / "home"), jail / "home", MS_BIND)
    _mount(str(paths["src"] / login / "tmp"), jail / "tmp", MS_BIND)
