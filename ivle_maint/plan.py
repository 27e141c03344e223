"""`ivle-maint plan`: what this node would do for OLD -> NEW; changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cluster.admin import read_status
from .cluster.presence import coordinated
from .cluster.waits import serving_old
from .db import migrations
from .errors import MaintError
from .gates import schema_hold
from .media.version import plan_media_version
from .preflight import classified_after_baseline
from .procedure import steps_for
from .services import maintenance_page

if TYPE_CHECKING:
    from .context import UpgradeContext


def _migration_lines(ctx: UpgradeContext, source: str | None) -> list[str]:
    # The new version's migrations when they are known (--migrations, or
    # the new package's manifest as ctx.new_migrations), else the installed ones.
    directory = ctx.preflight_migrations
    status = migrations.status(ctx.settings, migrations_dir=directory, reporter=ctx.reporter)
    if status.unmarked:
        try:
            recorded, pending = classified_after_baseline(ctx)
        except MaintError as exc:
            return [f"migrations: blocked: {exc}"]
        lines = [f"no migration marker yet: baseline records the {recorded} migrations of "
                 f"{ctx.old} as applied, without running them"]
        problems: list[str] = []
    else:
        plan = migrations.preflight(
            ctx.settings, migrations_dir=directory, accept_changed=ctx.accept_changed,
            allow_out_of_order=ctx.allow_out_of_order, reporter=ctx.reporter, check=False,
        )
        pending, problems, lines = plan.pending, plan.problems, []
    lines.append(f"pending migrations in {source or directory}: {len(pending)}")
    if ctx.new_migrations is None and ctx.migrations_dir is None:
        # Before the upgrade these are the old version's files: say so, or
        # "0 pending" reads as "NEW has no migrations".
        lines.append(f"  (read [paths] migrations, the installed version's files; {ctx.new}'s "
                     "may add more: give --new-migrations with its package's preinst, or "
                     "--migrations DIR)")
    lines += [f"  {c.key} ({c.mode})" for c in pending]
    lines += [f"  blocked: {problem}" for problem in problems]
    return lines


def _media_line(ctx: UpgradeContext) -> str:
    settings = ctx.settings
    media = plan_media_version(
        settings.ivle_conf_dir / "ivle.conf", settings.path_of("state"), ctx.new,
        upgrade=f"{ctx.old}->{ctx.new}", force=bool(settings["media"]["force"]),
    )
    if media.target is None:
        return "media version: not set in ivle.conf, left alone"
    return f"media version: {media.current} -> {media.target}"


def _cluster_lines(ctx: UpgradeContext) -> list[str]:
    mode = ctx.settings["cluster"]["coordinate"]
    if not coordinated(ctx.settings):
        return [f"cluster: not coordinated ([cluster] coordinate = {mode})"]
    lines = [f"cluster: coordinated through ivle_maint_nodes ([cluster] coordinate = {mode})"]
    try:
        status = read_status(ctx.settings, ctx.reporter)
    except MaintError as exc:
        return [*lines, f"  cannot read the cluster table: {exc}"]
    if ctx.settings.role in ("master", "both"):
        old = serving_old(status.nodes, ctx.settings.node_name, ctx.new)
        names = ", ".join(r.name for r in old)
        lines.append(f"  migrate waits for slaves serving older code: {names}" if old
                     else "  no slave serves older code: migrate would not wait")
    if ctx.settings.role in ("slave", "both"):
        lines.append("  start-web waits for the master's migrations; media version as the "
                     "slaves agree in ivle_maint_media")
    return lines


def describe(ctx: UpgradeContext, migrations_source: str | None = None) -> list[str]:
    """Lines for a person: role, steps in order, services, migrations, media.

    migrations_source: what to call ctx.new_migrations (a temporary copy of
    the new package's manifest) in the output.
    """
    settings = ctx.settings
    role = settings.role
    services = settings["services"]
    lines = [
        f"upgrade {ctx.old} -> {ctx.new} on {settings.node_name} (role: {role})",
        f"services: web server {services['web']!r}, user management {services['usrmgt']!r}",
        "steps:",
    ]
    lines += [f"  {s.phase:6} {s.name:15} {s.title}" for s in steps_for(role)]
    if role in ("master", "both"):
        lines += _migration_lines(ctx, migrations_source)
    if role in ("slave", "both"):
        lines.append(maintenance_page.plan_line(ctx.settings, ctx.during_upgrade))
        lines.append(schema_hold.status_line(ctx.settings))
        lines.append(_media_line(ctx))
    lines += _cluster_lines(ctx)
    return lines
