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
    unmount-jails    (before-phase) with [jails] run_mountallusers, every
                     login ivle-mountallusers -u walks a plain name (gates.names)
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
                     pinned.json, jail-inputs.json) replaced by itself
                     through gates.rewrite:
                     an immutable, linked or foreign file answers only then

Each step declares its own proofs (Step.checks, Step.programs, in its
module under ivle_maint/steps/ or the library it uses), and this module
runs them, stage by stage (context.PreflightStage), in the order of the
procedure: a step added to the after-phase adds its proof and its line
above, nothing here.
The settings and ivle.conf parse, the version goes forwards, and in a
cluster the node records itself in ivle_maint_nodes (the database answers
and no other node uses its name).  The steps and their libraries were
loaded before, with upgrade.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import system
from .context import AFTER, BEFORE, PreflightStage, Step, select_steps
from .errors import MaintError
from .gates.rewrite import existing_parent, prove_replaceable, prove_writable
from .installed import INSTALLED_RECORD
from .journal import Journal
from .procedure import STEPS
from .services.init_scripts import check_init_scripts
from .versions import check_upgrade

if TYPE_CHECKING:
    from .context import UpgradeContext

log = logging.getLogger(__name__)


def check_commands(ctx: UpgradeContext, steps: Sequence[Step]) -> None:
    """IVLE's programs this node's steps will run must exist."""
    needed = [c for s in steps if s.programs is not None for c in s.programs(ctx.settings)]
    path = os.environ.get("PATH", "") + ":" + system.SBIN_PATH
    missing = [c for c in needed if system.which(c, path=path) is None]
    if missing:
        raise MaintError(f"IVLE command(s) not found: {', '.join(missing)} (see [commands])")


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
            fs = os.statvfs(existing_parent(directory))
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


def check_records(ctx: UpgradeContext) -> None:
    """The upgrade's own records may be replaced (gates.rewrite): no symlink,
    nothing but a regular file, no hard link to split.  The steps' own
    state files follow (PreflightStage.STATE_FILES)."""
    state = ctx.settings.path_of("state")
    prove_replaceable(Journal.file_for(state, ctx.old, ctx.new), "the upgrade's journal")
    prove_replaceable(state / INSTALLED_RECORD, "the record of the installed version")


def run_stage(ctx: UpgradeContext, steps: Sequence[Step], stage: PreflightStage) -> None:
    """The steps' checks of STAGE, in the procedure's order."""
    for step in steps:
        for proof in step.checks:
            if proof.stage == stage:
                proof.run(ctx)


def check(ctx: UpgradeContext, steps: Sequence[Step] = STEPS) -> None:
    """All checks of this node's STEPS (procedure.STEPS); the first failure
    raises with nothing changed."""
    mine = select_steps(ctx.settings.role, (BEFORE, AFTER), steps)
    if ctx.old:
        check_upgrade(ctx.old, ctx.new, rollback=ctx.rollback is not None)
    ctx.ivle_conf  # noqa: B018 - parses ivle.conf, raising ConfigError if broken
    check_commands(ctx, mine)
    check_init_scripts(ctx.settings)
    check_state_room(ctx)
    for stage in PreflightStage:
        if stage is PreflightStage.STATE_FILES:
            check_records(ctx)
        if stage is PreflightStage.CLUSTER and ctx.cluster is None:
            continue
        run_stage(ctx, mine, stage)
    if ctx.cluster is not None:
        ctx.cluster.preflight()
    log.info("preflight passed")
    ctx.reporter.info("preflight checks passed")
