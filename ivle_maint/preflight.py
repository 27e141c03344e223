"""The gate of the after-phase: the preflight proves what the postinst will need.

The rule: everything a step after the code change will need is proved
here, while the site is still up, by doing it or its harmless twin (a
file created and removed, a row inserted in a transaction rolled back, a
record parsed), never by asking a permission bit or a privilege function.
A read-only mount, an immutable directory, a revoked privilege or a full
disk answer only when tried.  Nothing is stopped before this passes; a
failure is one line, exit 1, the site still up and nothing changed.

What each step run after the code change needs, and its proof here:

    migrate          every pending migration parsed and its file safe; the
                     marker created if missing, a row inserted and updated
                     (rolled back); for its dump: pg_dump found, every table
                     and sequence read (`SELECT 1 ... LIMIT 0` as the role
                     that dumps, row security off as pg_dump sets it), a
                     file created and removed in [paths] backup, room there
    stop-consoles    (before-phase, but after the web server stops) no
                     process in a jail that is no IVLE user's (gates.processes)
    rebuild-jail,    IVLE's commands found; a file created and removed in the
    remake-users     jail tree they rewrite (ivle.conf's jails src)
    media-version    ivle.conf and the media-version record parsed and the
                     value computed; a file created and removed beside
                     ivle.conf (its real path: the rewrite renames there) and
                     in [paths] backup (the previous ivle.conf goes there)
    restart-usrmgt,  the init scripts found and safe
    start-web
    media-version    (a coordinated slave) the claim's INSERT into the
    (cluster)        cluster's ivle_maint_media, rolled back
    every step       the journal in [paths] state: a journal-sized file
                     written and removed, and room left (statvfs); a new
                     upgrade proves this before its log is opened.  The
                     run's log is not proved: no step needs it (gate 10: a
                     log that cannot be written ends the log, never the
                     run, and dpkg is never left half-configured by it)
    start-web        the schema hold's release record replaced by itself
    at the end       installed.json replaced by itself; should the write
                     fail all the same, the next run of the completed
                     upgrade writes it (upgrade.py)
    (each record)    every state file the after-phase rewrites (journal,
                     installed.json, media-versions.json, schema-hold.json,
                     pinned.json) replaced by itself through gates.rewrite:
                     an immutable, linked or foreign file answers only then

A step added to the after-phase adds its proof here, and its line above.
The settings and ivle.conf parse, the version goes forwards, and in a
cluster the node records itself in ivle_maint_nodes (the database answers
and no other node uses its name).  The steps and their libraries were
loaded before, with upgrade.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
from psycopg2 import sql

from . import jaildir, system
from .cluster import media as cluster_media
from .consoles import jail_processes
from .db import migrations
from .db.classify import Classified, classify
from .db.connect import connect, params_from_settings
from .db.discovery import check_writers, discover
from .db.marker import why_not_writable
from .db.pins import PINS_FILE
from .errors import MaintError
from .gates.rewrite import check_rewritable, replace_file
from .gates.schema_hold import RELEASE_FILE
from .installed import INSTALLED_RECORD, old_migration_files
from .journal import Journal
from .media.version import MEDIA_RECORD, plan_media_version
from .safepaths import read_nofollow
from .services import maintenance_page
from .services.init_scripts import check_init_scripts
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
        try:
            plan = migrations.preflight(
                ctx.settings, migrations_dir=ctx.preflight_migrations,
                accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
                reporter=ctx.reporter, resume=ctx.resume,
            )
        except MaintError as exc:
            # One line, unless the way on needs an option (a changed applied file).
            if exc.resume and "--accept-changed" not in exc.resume:
                exc.resume = None
            raise
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


def _existing(directory: Path) -> Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def prove_writable(directory: Path, *, size: int = 0) -> None:
    """Really create (with SIZE bytes, flushed) and remove a file where the
    run will write, or the directory it will create there: a read-only
    mount, an immutable directory or a full disk defeats every permission
    check.  Raises OSError."""
    existing = _existing(directory)
    if existing != directory:  # the run will create the directory: try that here
        os.rmdir(tempfile.mkdtemp(prefix=".ivle-maint-preflight-", dir=existing))
        return
    fd, name = tempfile.mkstemp(prefix=".ivle-maint-preflight-", dir=directory)
    try:
        block = memoryview(b"\0" * size)
        while block:  # a short write is the disk filling up: the next one says so
            block = block[os.write(fd, block):]
        if size:
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def check_backup_writable(directory: Path) -> None:
    """A file really created and removed where the dump will go."""
    try:
        prove_writable(directory)
    except OSError as exc:
        raise MaintError(
            f"{_existing(directory)}: backups cannot be written there ({exc.strerror}): make it "
            "writable or set [database] backup = false"
        ) from None


# What the journal and the state records need at most, with the temporary
# copy an atomic rewrite makes beside the old file.
STATE_ROOM = 256 * 1024


def check_state_room(ctx: UpgradeContext) -> None:
    """[paths] state: a journal-sized file written and removed, and that much
    room (and inodes) left beside it.  Not [paths] log (see above)."""
    for key in ("state",):
        directory = ctx.settings.path_of(key)
        try:
            prove_writable(directory, size=STATE_ROOM)
            fs = os.statvfs(_existing(directory))
        except OSError as exc:
            raise MaintError(
                f"{directory}: the upgrade's {_NEEDS[key]} cannot be written there "
                f"({exc.strerror}): make room or make it writable, then run it again"
            ) from None
        free = fs.f_bavail * fs.f_frsize
        if free < STATE_ROOM or (fs.f_files and fs.f_favail < 8):
            raise MaintError(
                f"{directory}: {free // 1024} KiB and {fs.f_favail} inodes free, the upgrade's "
                f"{_NEEDS[key]} need {STATE_ROOM // 1024} KiB: make room, then run it again"
            )


_NEEDS = {"state": "journal and records"}


def check_backup_room(ctx: UpgradeContext) -> None:
    """A pg_dump is smaller than the database; refuse when even that won't fit."""
    if not ctx.settings["database"]["backup"]:
        return
    directory = ctx.settings.path_of("backup")
    check_backup_writable(directory)
    if system.which("pg_dump") is None:
        raise MaintError("pg_dump not found (install postgresql-client, or set "
                         "[database] backup = false)")
    _with_database(ctx, _check_room)
    _with_database(ctx, check_tables_readable)


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


# What pg_dump reads, as it chooses it: tables and sequences outside the
# system schemas, not an extension's own.
_DUMPED = """
SELECT n.nspname, c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'S')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2
"""


def check_tables_readable(ctx: UpgradeContext, conn: Any) -> None:
    """Every table and sequence the dump reads, read by the role that dumps
    (the same connection parameters), with row security off as pg_dump
    sets it: a policy that would hide rows fails here as it fails there."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        role = cur.fetchone()[0]
        cur.execute(_DUMPED)
        relations = cur.fetchall()
        cur.execute("SET LOCAL row_security = off")
        for schema, name, kind in relations:
            what = "sequence" if kind == "S" else "table"
            query = sql.SQL("SELECT 1 FROM {}.{} LIMIT 0").format(
                sql.Identifier(schema), sql.Identifier(name))
            try:
                cur.execute("SAVEPOINT ivle_maint_read")
                cur.execute(query)
                cur.execute("RELEASE SAVEPOINT ivle_maint_read")
            except psycopg2.Error as exc:
                conn.rollback()
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise MaintError(
                    f"database {conn.info.dbname}: role {role} cannot read {what} "
                    f"{schema}.{name} ({why}), so its backup would fail: GRANT SELECT ON "
                    f"{schema}.{name} TO {role}, or set [database] backup = false"
                ) from None
    conn.rollback()


def check_media(ctx: UpgradeContext) -> None:
    """The media-version step's needs: ivle.conf and the record parsed, the
    value computed, and where it writes really writable."""
    settings = ctx.settings
    conf = settings.ivle_conf_dir / "ivle.conf"
    force = bool(settings["media"]["force"])
    plan = plan_media_version(conf, settings.path_of("state"), ctx.new, force=force)
    if plan.target is None:  # left alone: nothing is written
        return
    check_rewritable(conf)  # replaced whole: no symlink, no hard link to split
    real = Path(os.path.realpath(conf)).parent
    try:
        prove_writable(real)
    except OSError as exc:
        raise MaintError(
            f"{real}: ivle.conf cannot be rewritten there ({exc.strerror}), so the media "
            "version could not change: make it writable (or leave [media] version unset)"
        ) from None
    backup = settings.path_of("backup")
    try:
        prove_writable(backup)
    except OSError as exc:
        raise MaintError(
            f"{_existing(backup)}: the copy of ivle.conf cannot be written there "
            f"({exc.strerror}): make it writable"
        ) from None


def check_jail_tree(ctx: UpgradeContext) -> None:
    """rebuild-jail and remake-users rewrite the jail tree: really writable."""
    src = ctx.ivle_conf.jail_src
    try:
        prove_writable(src)
    except OSError as exc:
        raise MaintError(
            f"{_existing(src)}: the jails cannot be rebuilt there ({exc.strerror}): make it "
            "writable"
        ) from None


def check_jail_mounts(ctx: UpgradeContext) -> None:
    """The jail mounts directory holds users' jails only (see jaildir), and
    no process in a jail is one the consoles step would refuse to stop (an
    administrator's shell: gates.processes)."""
    jaildir.check(ctx.ivle_conf)
    jail_processes.refuse_foreign_for(ctx.settings)


def check_rewrites(ctx: UpgradeContext) -> None:
    """Every file the upgrade will replace may be replaced (gates.rewrite):
    no symlink, nothing but a regular file, no hard link to split."""
    settings, state = ctx.settings, ctx.settings.path_of("state")
    paths = {Journal.file_for(state, ctx.old, ctx.new): "the upgrade's journal",
             state / INSTALLED_RECORD: "the record of the installed version"}
    if settings.role in ("slave", "both"):  # ivle.conf itself: check_media
        paths[state / MEDIA_RECORD] = "the record of media versions"
        paths[state / RELEASE_FILE] = "the schema hold's release (start-web writes it)"
    if settings.role in ("master", "both") and settings["database"]["backup"]:
        paths[settings.path_of("backup") / PINS_FILE] = "the record of pinned dumps"
    for path, what in paths.items():
        check_rewritable(path)
        prove_replaceable(path, what)


def prove_replaceable(path: Path, what: str) -> None:
    """PATH, when it exists, really replaced by its own bytes (gates.rewrite)."""
    try:
        data = read_nofollow(path)
    except FileNotFoundError:
        return  # a new file: its directory was proved (check_state_room)
    except OSError as exc:
        raise MaintError(f"{path}: {what} cannot be read ({exc.strerror}): make it "
                         "readable by root, then run it again") from None
    try:
        replace_file(path, data)
    except MaintError as exc:
        raise MaintError(f"{path}: {what} cannot be rewritten ({exc}): fix it, then run "
                         "it again") from None


def check(ctx: UpgradeContext) -> None:
    """All checks; the first failure raises with nothing changed."""
    if ctx.old:
        check_upgrade(ctx.old, ctx.new)
    ctx.ivle_conf  # noqa: B018 - parses ivle.conf, raising ConfigError if broken
    check_commands(ctx)
    check_init_scripts(ctx.settings)
    check_state_room(ctx)
    if ctx.settings.role in ("slave", "both"):
        check_jail_mounts(ctx)
        maintenance_page.preflight(ctx.settings, ctx.during_upgrade)
    if ctx.settings.role in ("master", "both"):
        check_jail_tree(ctx)
        pending = check_database(ctx)
        if pending:
            check_backup_room(ctx)
    if ctx.settings.role in ("slave", "both"):
        check_media(ctx)
    check_rewrites(ctx)
    if ctx.cluster is not None:
        if ctx.settings.role in ("slave", "both"):
            cluster_media.check_claim(ctx)
        ctx.cluster.preflight()
    log.info("preflight passed")
    ctx.reporter.info("preflight checks passed")
