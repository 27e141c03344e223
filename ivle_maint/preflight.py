"""Checks run before anything is stopped: a failure leaves the site up.

Everything an upgrade will need is checked here, so that the disruptive
part starts only when it can finish: the settings and ivle.conf parse, the
version goes forwards, IVLE's commands exist, the database answers, every
pending migration parses, and the backup fits on its disk.  In a cluster
the node records itself in ivle_maint_nodes, which proves the database
answers and that no other node uses its name.  (The steps and their
libraries were loaded before, with upgrade.py.)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import jaildir, system
from .db.classify import Classified, classify
from .db.connect import connect, params_from_settings
from .db.discovery import check_writers, discover
from .db.marker import why_not_writable
from .db.pins import PINS_FILE
from .errors import MaintError
from .gates.rewrite import check_rewritable
from .installed import INSTALLED_RECORD, old_migration_files
from .journal import Journal
from .steps import maintenance, media, migrations
from .steps.services import check_init_scripts
from .versions import check_upgrade

if TYPE_CHECKING:
    from .context import UpgradeContext

log = logging.getLogger(__name__)


def check_commands(ctx: UpgradeContext) -> None:
    """IVLE's programs this node's role will run must exist."""
    role, commands = ctx.settings.role, ctx.settings["commands"]
    needed = []
    if role in ("master", "both"):
        needed += [commands["buildjail"], commands["remakeuser"]]
    if role in ("slave", "both") and ctx.settings["jails"]["run_mountallusers"]:
        needed.append(commands["mountallusers"])
    path = os.environ.get("PATH", "") + ":" + system.SBIN_PATH
    missing = [c for c in needed if system.which(c, path=path) is None]
    if missing:
        raise MaintError(f"IVLE command(s) not found: {', '.join(missing)} (see [commands])")


def classified_after_baseline(ctx: UpgradeContext) -> tuple[int, list[Classified]]:
    """For a database without a marker: (old migrations the baseline step
    will record, every other shipped migration read and classified).

    Raises MaintError when nothing says which migrations OLD shipped, or
    when a new file does not parse.
    """
    old = old_migration_files(ctx)
    if old is None:
        raise MaintError(
            f"the database has no migration marker and the migrations of {ctx.old} are "
            "no longer known: record them with 'ivle-maint db baseline THROUGH' first"
        )
    old_names = {p.name for p in old}
    new = [m for m in discover(ctx.preflight_migrations) if m.name not in old_names]
    # The files the upgrade will run: as migrate itself checks them, but now.
    check_writers(ctx.preflight_migrations, [m.path for m in new])
    return len(old), [classify(m) for m in new]


def check_database(ctx: UpgradeContext) -> int:
    """The migrations can run: marker or a baseline source, all files parse,
    and the role may create (or write) the marker table.

    Returns the number of pending migrations.
    """
    status = migrations.status(ctx.settings, migrations_dir=ctx.preflight_migrations,
                               reporter=ctx.reporter)
    if status.unmarked:
        pending = len(classified_after_baseline(ctx)[1])
    else:
        plan = migrations.preflight(
            ctx.settings, migrations_dir=ctx.preflight_migrations,
            accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
            reporter=ctx.reporter, resume=None,
        )
        pending = len(plan.pending)
    if pending or status.unmarked:
        _with_database(ctx, check_marker_writable)
    return pending


def _with_database(ctx: UpgradeContext, check: Callable[[UpgradeContext, Any], None]) -> None:
    params = params_from_settings(ctx.settings)
    conn = connect(params, wait_timeout=ctx.settings["database"]["wait_timeout"],
                   reporter=ctx.reporter)
    try:
        check(ctx, conn)
    finally:
        conn.close()


def check_marker_writable(ctx: UpgradeContext, conn: Any) -> None:
    """The database role may create the marker table, or write the one there."""
    why = why_not_writable(conn)
    if why:
        raise MaintError(f"database {conn.info.dbname}: {why}")


def check_backup_writable(directory: Path) -> None:
    """Really create and remove a file where the dump will go (a read-only
    mount or an immutable directory defeats every permission check)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing == directory:
            fd, name = tempfile.mkstemp(prefix=".ivle-maint-preflight-", dir=directory)
            os.close(fd)
            os.unlink(name)
        else:  # the dump will create the directory: try that here
            os.rmdir(tempfile.mkdtemp(prefix=".ivle-maint-preflight-", dir=existing))
    except OSError as exc:
        raise MaintError(
            f"{existing}: backups cannot be written there ({exc.strerror}): make it writable "
            "or set [database] backup = false"
        ) from None


def check_backup_room(ctx: UpgradeContext) -> None:
    """A pg_dump is smaller than the database; refuse when even that won't fit."""
    if not ctx.settings["database"]["backup"]:
        return
    directory = ctx.settings.path_of("backup")
    check_backup_writable(directory)
    _with_database(ctx, _check_room)


def _check_room(ctx: UpgradeContext, conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        size = int(cur.fetchone()[0])
    directory = ctx.settings.path_of("backup")
    existing = directory if directory.exists() else directory.parent
    free = shutil.disk_usage(existing).free
    if free < size:
        raise MaintError(
            f"{directory}: {free // 2**20} MiB free, the database is {size // 2**20} MiB: "
            "make room for its backup or set [database] backup = false"
        )


def check_jail_mounts(ctx: UpgradeContext) -> None:
    """The jail mounts directory holds users' jails only (see jaildir)."""
    jaildir.check(ctx.ivle_conf)


def check_rewrites(ctx: UpgradeContext) -> None:
    """Every file the upgrade will replace may be replaced (gates.rewrite):
    no symlink, nothing but a regular file, no hard link to split."""
    settings, state = ctx.settings, ctx.settings.path_of("state")
    paths = [Journal.file_for(state, ctx.old, ctx.new),
             state / INSTALLED_RECORD]
    if settings.role in ("slave", "both"):
        media.preflight(settings)  # ivle.conf, when media-version will rewrite it
        paths.append(state / media.RECORD_NAME)
    if settings.role in ("master", "both") and settings["database"]["backup"]:
        paths.append(settings.path_of("backup") / PINS_FILE)
    for path in paths:
        check_rewritable(path)


def check(ctx: UpgradeContext) -> None:
    """All checks; the first failure raises with nothing changed."""
    if ctx.old:
        check_upgrade(ctx.old, ctx.new)
    ctx.ivle_conf  # noqa: B018 - parses ivle.conf, raising ConfigError if broken
    check_commands(ctx)
    check_init_scripts(ctx.settings)
    if ctx.settings.role in ("slave", "both"):
        check_jail_mounts(ctx)
        maintenance.preflight(ctx.settings, ctx.during_upgrade)
    if ctx.settings.role in ("master", "both"):
        pending = check_database(ctx)
        if pending:
            check_backup_room(ctx)
    check_rewrites(ctx)
    if ctx.cluster is not None:
        ctx.cluster.preflight()
    log.info("preflight passed")
    ctx.reporter.info("preflight checks passed")
