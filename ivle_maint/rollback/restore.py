"""A rollback's own forms of the steps that change what the point kept.

A rollback is the upgrade OLD -> NEW that goes back to the restore point
of the upgrade NEW -> OLD (context.UpgradeContext.rollback): IVLE's
procedure runs as for any release (the web server down, consoles ended,
jails unmounted, the old code installed by dpkg, user jails remade, a new
media version, services started), journaled and resumable the same way;
three things differ, here:

- the files (ivle.conf, ivle-maint's settings) come back as kept, first
  thing in the after-phase (once: a rerun does not undo the media step);
- the migrate step puts the database back: nothing when the way back is
  code only (rollback/choose.py), else the dump restored into a new
  database and swapped in by name, the replaced one kept;
- the rebuild-jail step renames the kept template back instead of building.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Settings
from ..context import ACCEPT_DATA_LOSS_ENV, Outcome, UpgradeContext
from ..db.connect import ConnectParams, params_from_settings
from ..db.marker import applied, exists
from ..db.session import session
from ..errors import MaintError
from ..gates.rewrite import fsync_dir, replace_file
from ..gates.text import ivle_maint
from ..safepaths import read_nofollow
from . import cluster_rows
from . import database as db
from .choose import FULL, Way, choose
from .differences import summary
from .keep import IVLE_CONF, SETTINGS
from .point import RestorePoint
from .sessions import exists as database_named
from .sessions import maintenance
from .trees import remove_tree

RESTORED_FILES = "files-restored"


def point_of(ctx: UpgradeContext) -> RestorePoint:
    point = ctx.rollback
    assert point is not None, "only a rollback restores"
    return point


def admin_params(settings: Settings) -> ConnectParams:
    """Who a full rollback creates and renames databases as ([rollback] connect_as);
    the dump is restored as fill_params."""
    return params_from_settings(settings, settings["rollback"]["connect_as"])


def fill_params(settings: Settings) -> ConnectParams:
    """Who a full rollback restores the dump as: ivle.conf's login, never
    [rollback] connect_as's superuser (db/client.restore_argv)."""
    return params_from_settings(settings, "ivle-conf")


def restored_name(live: str, point: RestorePoint) -> str:
    """Where the point's dump is restored beside LIVE (one name per point)."""
    return f"{live}_rollback_{point.sequence}"


def database_exists(params: ConnectParams, name: str) -> bool:
    with maintenance(params, None) as cur:
        return bool(database_named(cur, name))


def way_back(ctx: UpgradeContext) -> Way:
    """The way back, from the marker as it is now."""
    point = point_of(ctx)
    with session(ctx.settings, ctx.reporter, ctx.resume) as s:
        keys = applied(s.conn) if exists(s.conn) else {}
    return choose(point, keys)


def restore_files(ctx: UpgradeContext) -> list[str]:
    """ivle.conf and the settings as kept (checked against their sha256)."""
    point = point_of(ctx)
    marker = point.directory / RESTORED_FILES
    if marker.exists():
        return []
    restored = []
    # Put back where this run reads them, never where a record says.
    targets = {IVLE_CONF: ctx.ivle_conf.path, SETTINGS: ctx.settings.path}
    for name in sorted(set(point.files) & set(targets)):
        data, target = point.kept_file(name), targets[name]
        if target.is_file() and read_nofollow(target) == data:
            continue
        replace_file(target, data)
        restored.append(str(target))
    replace_file(marker, b"\n".join(s.encode() for s in restored) + b"\n", mode=0o600)
    return restored


def check_way(ctx: UpgradeContext) -> None:
    """The preflight's: a full rollback not accepted stops before anything does."""
    if ctx.rollback is None:
        return
    way = way_back(ctx)
    if way.full and not ctx.accept_data_loss:
        raise MaintError(_refusal(way), resume=ctx.resume)
    if way.full:
        point_of(ctx).check_dump()


def _refusal(way: Way) -> str:
    return (f"a full rollback replaces the database with the restore point's dump "
            f"({way.why}); what was written since is lost: see it with "
            f"'{ivle_maint('rollback', '--dry-run')}' (the rows per table), then accept it: "
            f"{ivle_maint('rollback', '--accept-data-loss')} (under apt: "
            f"{ACCEPT_DATA_LOSS_ENV}=1)")


def settle(ctx: UpgradeContext) -> Outcome | None:
    """First in a rollback's database step, before anything connects to the
    live database: a swap a killed run left half done, or with the live
    database closed to sessions, settled.  The step's outcome when the swap
    is done (the marker is the dump's now: way_back would say code only)."""
    point = point_of(ctx)
    if not point.failed_database:  # recorded before the swap closes anything
        return None
    params = admin_params(ctx.settings)
    state = db.resume_swap(params, params.dbname, restored_name(params.dbname, point),
                           point.failed_database, reporter=ctx.reporter)
    if state is not db.SwapState.DONE:
        return None
    return _swapped(ctx, params, point.failed_database,
                    "the database swap of an interrupted run is finished")


def database(ctx: UpgradeContext) -> Outcome:
    """The migrate step of a rollback."""
    point = point_of(ctx)
    params = admin_params(ctx.settings)
    way = way_back(ctx)
    ctx.reporter.info(f"rollback: {way.kind}: {way.why}")
    if not way.full:
        return Outcome(f"{way.kind}: {way.why}", {"rollback": way.kind,
                                                  "kept_migrations": list(way.since)})
    if not ctx.accept_data_loss:
        raise MaintError(_refusal(way), resume=ctx.resume)
    dump = point.check_dump()
    live = params.dbname
    restored = restored_name(live, point)
    # The preview's copy, from the same dump, if it was restored whole.
    made = db.whole_copy(params, dump, restored, fill_as=fill_params(ctx.settings),
                         reporter=ctx.reporter)
    ctx.reporter.info(f"rollback: {made}")
    # Writes have stopped: this is what the swap loses, for the log.
    for line in summary(db.differences(params, live, restored, reporter=ctx.reporter)):
        ctx.reporter.info(f"rollback: {line}")
    name = db.kept_name(live)
    point.update(lambda p: setattr(p, "failed_database", p.failed_database or name))
    keep_as = point.failed_database or name
    # The cluster's rows are today's, not the dump's (rollback/cluster_rows.py).
    # As ivle.conf's login, as the restore: never the superuser (cluster_rows.carry).
    carried = cluster_rows.carry(fill_params(ctx.settings), live, restored,
                                 grantee=_ivle_user(ctx.settings), reporter=ctx.reporter)
    if carried:
        ctx.reporter.info(f"rollback: carried over from {live}: {', '.join(carried)}")
    db.swap(params, live, restored, keep_as, reporter=ctx.reporter)
    return _swapped(ctx, params, keep_as, way.why)


def _swapped(ctx: UpgradeContext, params: ConnectParams, keep_as: str, why: str) -> Outcome:
    """The full rollback's end, once the restored database is live."""
    point, live = point_of(ctx), params.dbname
    days = ctx.settings["rollback"]["keep_failed_database_days"]
    if days > 0:
        db.drop_expired(params, live, days, reporter=ctx.reporter)
    dump = Path(point.dump["path"]).name if point.dump else "the restore point's dump"
    return Outcome(f"full: {why}; database {live} restored from {dump}, "
                   f"the replaced one kept as {keep_as}",
                   {"rollback": FULL, "kept_database": keep_as})


def template(ctx: UpgradeContext) -> Outcome | None:
    """The rebuild-jail step of a rollback: the kept template renamed back
    (None: none was kept; the step rebuilds from the old code)."""
    kept = point_of(ctx).template
    if kept is None:
        return None
    live, aside = Path(kept["path"]), Path(kept["aside"])
    gone = live.with_name(f"{live.name}.rolled-back")
    if aside.is_dir() and not aside.is_symlink():
        if live.exists() or live.is_symlink():
            if gone.exists():
                _remove(gone)
            os.rename(live, gone)
        os.rename(aside, live)
        fsync_dir(live.parent)
    elif not live.is_dir():
        raise MaintError(f"{aside}: the restore point's jail template is gone, and so is "
                         f"{live}")
    if gone.exists():
        _remove(gone)
    return Outcome(f"jail template put back as kept ({live})", {})


def _ivle_user(settings: Settings) -> str | None:
    """ivle.conf's database user: the slaves write the cluster's tables as it."""
    user = settings.ivle_conf().database.get("username")
    return str(user) if user else None


def _remove(path: Path) -> None:
    remove_tree(path)
