"""The procedure's step names bound to the library steps.

Each action takes the UpgradeContext and returns an Outcome: one line for
the person and the numbers the summary reports.  The steps themselves live
in ivle_maint/steps; this module only chooses their arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_state_file
from .config import Settings
from .errors import MaintError
from .procedure import Action, Outcome
from .safepaths import read_nofollow

if TYPE_CHECKING:
    from .upgrade import UpgradeContext

INSTALLED_RECORD = "installed.json"


def _services(ctx: UpgradeContext, action: str, which: str) -> Outcome:
    from .steps.services import run_action

    results = run_action(ctx.settings, ctx.reporter, action, which)
    return Outcome(
        "; ".join(r.message for r in results),
        {r.service: f"{r.outcome}:{r.state}" for r in results},
    )


def stop_web(ctx: UpgradeContext) -> Outcome:
    from .steps import maintenance

    if maintenance.mode(ctx.settings, ctx.during_upgrade) == maintenance.MAINTENANCE:
        return Outcome(maintenance.enter(ctx.settings, ctx.reporter), {"maintenance": True})
    return _services(ctx, "stop", "web")


def start_web(ctx: UpgradeContext) -> Outcome:
    from .cluster.waits import wait_for_master

    # New code never serves on a schema the master has not migrated yet, nor
    # before the master has rebuilt the jail tree the slaves share with it.
    waited = wait_for_master(ctx)
    left = maintenance_left(ctx)
    if left:
        return Outcome(f"{waited}; {left}" if waited else left)
    late = started_by_hand(ctx)
    outcome = _services(ctx, "restart" if late else "start", "web")
    if late:
        outcome.summary = f"{late}: restarted on the new code; {outcome.summary}"
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


def maintenance_left(ctx: UpgradeContext) -> str | None:
    """The maintenance page taken down and IVLE's sites restored, if stop-web put it up."""
    from .steps.maintenance import leave

    return leave(ctx.settings, ctx.reporter)


def started_by_hand(ctx: UpgradeContext) -> str:
    """Why the running web server must be restarted, or "" if it need not.

    This upgrade stopped the web server (stop-web begun), yet it runs: it
    was started by hand since, before the new code and the migrations were
    both in place, so it may hold the old code or an old schema's view.
    Its start time cannot be read portably (init script, systemd), but it
    is later than stop-web's, so always before this check: restart it."""
    from .steps.services import RUNNING, control_from_settings

    journal = getattr(ctx.cluster, "journal", None)
    if not ctx.code_is_new or journal is None or "stop-web" not in journal.steps:
        return ""  # an abort brings the old code back: a plain start
    name = ctx.settings["services"]["web"]
    if control_from_settings(ctx.settings, ctx.reporter).status(name) != RUNNING:
        return ""
    return f"{name} was started by hand after the before-phase stopped it"


def restart_usrmgt(ctx: UpgradeContext) -> Outcome:
    return _services(ctx, "restart", "usrmgt")


def stop_consoles(ctx: UpgradeContext) -> Outcome:
    from .steps.consoles import stop_consoles_for

    result = stop_consoles_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"consoles_stopped": result.count, "killed": result.killed})


def unmount_jails(ctx: UpgradeContext) -> Outcome:
    from .steps.mounts import unmount_jails_for

    result = unmount_jails_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"jails_unmounted": len(result.unmounted)})


def old_migration_files(ctx: UpgradeContext) -> list[Path] | None:
    """The migrations OLD shipped, or None when nothing says which they were.

    Before the new code is unpacked they are the files on disk; afterwards
    only the record of the last install knows them.
    """
    record = read_installed(ctx.settings)
    if record and record.get("version") == ctx.old:
        directory = Path(record["migrations_dir"])
        return [directory / name for name in record["migrations"]]
    if not ctx.code_is_new:
        return sorted(ctx.settings.path_of("migrations").glob("*.sql"))
    return None


def baseline(ctx: UpgradeContext) -> Outcome:
    """Give a database without a marker the old version's migrations."""
    from .steps.migrations import baseline as record_baseline

    files = old_migration_files(ctx)
    if files is None:
        return Outcome("no record of the old version's migrations; the marker must exist")
    result = record_baseline(
        ctx.settings, files, ctx.reporter, package_version=ctx.old, when_unmarked=True,
        resume=ctx.resume,
    )
    if result.skipped:
        return Outcome("the database already has its migration marker")
    return Outcome(f"recorded {len(result.recorded)} migrations of {ctx.old} as applied",
                   {"baselined": len(result.recorded)})


def migrate(ctx: UpgradeContext) -> Outcome:
    from .cluster.waits import wait_for_slaves
    from .steps.migrations import migrate as apply_migrations

    # The seed: slaves' web servers are down before the schema changes.
    waited = wait_for_slaves(ctx)
    result = apply_migrations(
        ctx.settings, ctx.reporter, migrations_dir=ctx.migrations,
        accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
        package_version=ctx.new, resume=ctx.resume,
        upgrade=ctx.upgrade_id or None, epoch=_epoch(ctx),
        terminate_stale_lock=ctx.terminate_stale_lock,
    )
    keys = [a.key for a in result.applied]
    summary = f"applied {len(keys)} migrations" + (f" ({', '.join(keys)})" if keys else "")
    if result.backup:
        summary += f"; backup {result.backup}"
    if result.upgrade_backup and result.upgrade_backup != result.backup:
        summary += f"; before the upgrade: {result.upgrade_backup}"
    if waited:
        summary = f"{waited}; {summary}"
    return Outcome(summary, {"migrations_applied": _applied_in_upgrade(ctx, keys)})


def _applied_in_upgrade(ctx: UpgradeContext, keys: list[str]) -> list[str]:
    """This run's KEYS and those an earlier, killed run of the upgrade applied.

    The summary is the upgrade's, not the last process's: the marker's rows
    for NEW applied (not baselined) since the upgrade began count too.
    """
    if not ctx.started:
        return keys
    from datetime import UTC, datetime

    from .steps.migrations import status

    since = datetime.fromtimestamp(ctx.started, UTC)
    try:
        rows = status(ctx.settings, migrations_dir=ctx.migrations).applied.values()
    except MaintError:  # the summary is not worth failing the step for
        return keys
    earlier = {r.key for r in rows if r.package_version == ctx.new and r.mode != "baseline"
               and r.applied_at >= since}
    return sorted(earlier | set(keys))


def _epoch(ctx: UpgradeContext) -> str:
    """When this attempt's first recorded step began: an abort forgets the
    steps, so a dump from before a restarted web server is not reused."""
    journal = getattr(ctx.cluster, "journal", None)
    starts = [r.started for name, r in (journal.steps.items() if journal else ())
              if name != "migrate"]
    return f"{min(starts):.6f}" if starts else ""


def _with_wait(waited: str, outcome: Outcome) -> Outcome:
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


def rebuild_jail(ctx: UpgradeContext) -> Outcome:
    from .cluster.waits import wait_for_jails_free
    from .steps.jail_rebuild import rebuild_jail as run_buildjail

    # The tree is shared with the slaves (NFS): none may have a jail of it
    # mounted, or a console running in one, while it is rewritten.
    waited = wait_for_jails_free(ctx, "rebuild-jail")
    result = run_buildjail(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return _with_wait(waited, Outcome(result.summary, result.metrics))


def remake_users(ctx: UpgradeContext) -> Outcome:
    from .cluster.waits import wait_for_jails_free
    from .steps.user_jails import remake_user_jails

    waited = wait_for_jails_free(ctx, "remake-users")
    result = remake_user_jails(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return _with_wait(waited, Outcome(result.summary, result.metrics))


def media_version(ctx: UpgradeContext) -> Outcome:
    from .cluster.media import agree
    from .steps.media import change_media_version

    # The value derives from NEW and the record of values used, the same on
    # every node; upgrade_id only makes a rerun reuse its own value.  In a
    # cluster, the slaves first agree on it in the database (cluster/media.py).
    agree(ctx)
    result = change_media_version(ctx.settings, ctx.new, upgrade=ctx.upgrade_id)
    return Outcome(result.summary, {"media_old": result.old, "media_new": result.new})


ACTIONS: dict[str, Action] = {
    "stop-web": stop_web,
    "stop-consoles": stop_consoles,
    "unmount-jails": unmount_jails,
    "baseline": baseline,
    "migrate": migrate,
    "rebuild-jail": rebuild_jail,
    "remake-users": remake_users,
    "media-version": media_version,
    "restart-usrmgt": restart_usrmgt,
    "start-web": start_web,
}


def read_installed(settings: Settings) -> dict[str, Any] | None:
    """The record of the last install or upgrade this node completed."""
    path = settings.path_of("state") / INSTALLED_RECORD
    try:
        data: dict[str, Any] = json.loads(read_nofollow(path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MaintError(f"{path}: unreadable: {exc}") from None
    return data


def recorded_version(settings: Settings) -> str | None:
    record = read_installed(settings)
    return str(record["version"]) if record else None


def record_installed(ctx: UpgradeContext) -> None:
    """Remember NEW and the migrations it shipped, for the next upgrade's baseline."""
    directory = ctx.migrations
    names = sorted(p.name for p in directory.glob("*.sql")) if directory.is_dir() else []
    data = {"version": ctx.new, "migrations_dir": str(directory), "migrations": names}
    path = ctx.settings.path_of("state") / INSTALLED_RECORD
    write_state_file(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o644)


def record_fresh_install(ctx: UpgradeContext) -> str:
    """A fresh install runs no procedure; it records what an upgrade will need."""
    record_installed(ctx)
    return f"fresh install of {ctx.new}: recorded its migrations for the next upgrade"
