"""ivle-maint mounts list|unmount [--lazy]: the user jail mounts."""

from __future__ import annotations

from typing import Any

from . import Context

ORDER = 32

EPILOG = """\
Every mount strictly below the jail mounts directory (ivle.conf
[paths][[jails]] mounts, symlinks resolved) counts, as the kernel's mount
table shows it: also mounts of users no longer in the database, which
'ivle-mountallusers -u' misses.  Nothing outside that directory is ever
touched, and a directory that is /, a system directory, IVLE's whole
tree, or holds mounts other than users' jails is refused (exit status 2).
A busy mount is reported with the processes holding it and left mounted
(exit status 1) unless --lazy or [jails] lazy_unmount detaches it
lazily.  With [jails] run_mountallusers, 'ivle-mountallusers -u' runs
first.  'list' prints one mount a line, tab-separated (mount point, ro/rw,
type, source path); space, tab, newline, backslash, other control
characters and bytes that are not UTF-8 in them are escaped in octal as
/proc/self/mountinfo does (\\040 \\011 \\012 \\134)."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "mounts",
        help="list or unmount the user jail mounts",
        description="List or unmount the user jail mounts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("list", "unmount"), help="list them, or unmount them")
    parser.add_argument(
        "--lazy", action="store_true", default=None,
        help="detach busy mounts lazily (umount -l) instead of failing",
    )  # fmt: skip
    parser.set_defaults(func=cmd_mounts)


def cmd_mounts(ctx: Context) -> int:
    """Print the jail mounts, or unmount them all."""
    from ..jails import mounts
    from ..mountinfo import escape

    if ctx.args.action == "unmount":
        ctx.refuse_unsafe()  # ivle.conf names the directory; settings, IVLE's tool
        result = mounts.unmount_jails_for(ctx.settings, ctx.reporter, lazy=ctx.args.lazy)
        ctx.reporter.info(result.summary)
        return 0
    jail_mounts = ctx.settings.ivle_conf().jail_mounts
    found = mounts.list_jail_mounts(jail_mounts)
    for mount in sorted(found, key=lambda m: m.mountpoint):
        mode = "ro" if mount.readonly else "rw"
        # Escaped as in /proc/self/mountinfo: a tab or newline in a name
        # cannot split the line.
        print(f"{escape(mount.mountpoint)}\t{mode}\t{escape(mount.fstype)}\t{escape(mount.root)}")
    ctx.reporter.info(f"{len(found)} mounts under {mounts.jail_mounts_dir(jail_mounts)}")
    return 0
