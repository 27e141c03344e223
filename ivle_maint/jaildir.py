"""Is the jail mounts directory one that only holds users' jails?

The consoles step signals processes whose root, cwd or open files lie in
a jail under this directory, and the unmount step unmounts everything
below it.  Pointed at ``/``, ``/srv`` or IVLE's data directory, both
would reach far beyond IVLE (PostgreSQL, the user management server), so
the directory is checked before anything stops:

- set, absolute, not ``/``, not a top-level or well-known system
  directory (``/srv``, ``/var/lib``, ...);
- not holding (or lying in) IVLE's data, jail sources, jail template,
  share or prefix;
- reached through a symlink only if it stays inside IVLE's data directory;
- every mount below it belongs to a user's jail: ``MOUNTS/LOGIN`` is the
  template bind-mounted, or ``LOGIN`` has a jail in the jail sources.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from . import mountinfo
from .config import IvleConf
from .errors import ConfigError
from .gates.text import shown
from .mountinfo import Mount, is_at_or_below, is_below

SETTING = "[paths][[jails]] mounts"

# Directories that hold far more than IVLE's jails (FHS and Debian).
SYSTEM_DIRS = frozenset({
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/lib", "/usr/local", "/usr/share", "/usr/local/lib", "/usr/local/share",
    "/var/lib", "/var/tmp", "/var/log", "/var/cache", "/var/spool", "/var/backups",
    "/var/mail", "/var/opt", "/var/local", "/var/www", "/var/run", "/var/lib/postgresql",
})  # fmt: skip


def _refuse(ivle: IvleConf | None, why: str) -> ConfigError:
    where = f"{ivle.path}: " if ivle is not None else ""
    return ConfigError(
        f"{where}{SETTING} {why}; refusing to stop processes or unmount anything there "
        "(it must be IVLE's own jail mounts directory, e.g. ${data}/jailmounts)"
    )


def resolve(path: str | os.PathLike[str], ivle: IvleConf | None = None) -> str:
    """The directory, symlinks resolved, after the checks that need no ivle.conf."""
    raw = os.fspath(path)
    if not raw.strip():
        raise _refuse(ivle, "is empty")
    if not os.path.isabs(raw):
        raise _refuse(ivle, f"{shown(raw)} is not an absolute path")
    top = os.path.realpath(raw)
    via = "" if top == os.path.normpath(raw) else f" (through a symlink: {shown(raw)})"
    if PurePosixPath(top) == PurePosixPath("/"):
        raise _refuse(ivle, f"resolves to /{via}")
    if len(PurePosixPath(top).parts) < 3 or top in SYSTEM_DIRS:
        raise _refuse(ivle, f"resolves to the system directory {shown(top)}{via}")
    return top


def _ivle_dirs(ivle: IvleConf) -> dict[str, str]:
    paths = ivle.conf["paths"]
    dirs = {"data": paths["data"], "prefix": paths["prefix"], "share": paths["share"],
            "lib": paths["lib"], "jails src": paths["jails"]["src"],
            "jail template": paths["jails"]["template"]}  # fmt: skip
    return {name: os.path.realpath(value) for name, value in dirs.items() if value}


def _template_signature(template: str, table: list[Mount]) -> tuple[str, str] | None:
    """(device, root inside that filesystem) a bind mount of the template shows."""
    holders = [m for m in table if is_at_or_below(template, m.mountpoint)]
    if not holders:
        return None
    mount = max(holders, key=lambda m: m.depth)  # the last one wins when stacked
    rest = PurePosixPath(template).parts[len(PurePosixPath(mount.mountpoint).parts):]
    return mount.device, str(PurePosixPath(mount.root, *rest))


def foreign_mounts(top: str, ivle: IvleConf, table: list[Mount]) -> list[Mount]:
    """Mounts below top that are not part of a user's jail."""
    dirs = _ivle_dirs(ivle)
    src = dirs.get("jails src", "")
    template = _template_signature(dirs.get("jail template", ""), table)
    below = [m for m in table if is_below(m.mountpoint, top)]
    depth = len(PurePosixPath(top).parts)
    roots = {m.mountpoint: m for m in below if m.depth == depth}
    foreign = []
    for mount in below:
        login = PurePosixPath(mount.mountpoint).parts[depth]
        jail_root = roots.get(os.path.join(top, login))
        is_template = jail_root is not None and (jail_root.device, jail_root.root) == template
        if not (is_template or (src and os.path.isdir(os.path.join(src, login)))):
            foreign.append(mount)
    return foreign


def check(ivle: IvleConf, table: list[Mount] | None = None) -> str:
    """The jail mounts directory of ivle.conf, realpath'd; ConfigError if unsafe."""
    raw = ivle.conf["paths"]["jails"]["mounts"] or ""
    top = resolve(raw, ivle)
    dirs = _ivle_dirs(ivle)
    for name, path in dirs.items():
        if is_at_or_below(path, top):
            raise _refuse(ivle, f"{shown(top)} holds IVLE's {name} directory {shown(path)}")
    for name in ("jails src", "jail template"):
        path = dirs.get(name, "")
        if path and is_at_or_below(top, path):
            raise _refuse(ivle, f"{shown(top)} lies in IVLE's {name} directory {shown(path)}")
    data = dirs.get("data")
    if top != os.path.normpath(raw) and not (data and is_below(top, data)):
        raise _refuse(ivle, f"{shown(raw)} is a symlink to {shown(top)}, outside IVLE's data "
                            f"directory {shown(data or '(unset)')}")  # fmt: skip
    foreign = foreign_mounts(top, ivle, mountinfo.read() if table is None else table)
    if foreign:
        first = foreign[0]
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise _refuse(ivle, f"{shown(top)} holds mounts that are not users' jails: "
                            f"{shown(first.mountpoint)} ({first.fstype} {shown(first.source)})"
                            f"{more}")  # fmt: skip
    return top
