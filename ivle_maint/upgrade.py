"""An upgrade of this node from OLD to NEW: lock, log, preflight, journal.

The dpkg hooks, `ivle-maint upgrade` and `ivle-maint rerun` all come
through here; they differ only in which phases they run.  Loading this
module loads IVLE's procedure, every step and every library the steps use
(procedure.STEPS); the third-party modules the steps load only when they
act (sh, to run a command; pglast, to parse SQL; python3-debian's DebFile,
to read a .deb; http.client, to ask a web server; psutil, to look at
processes) are loaded by preload(), before the first step of every run.
So a broken install (a bad python3-psutil, say) fails before anything is
stopped, and nothing is left to import once the web server is down.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import children, preflight, release_needs, system
from .cluster.presence import Presence, coordinated
from .cluster.waits import wait_for_every_before_phase
from .config import Settings
from .context import (
    ACCEPT_CLASS_ENV,
    AFTER,
    BEFORE,
    RunOptions,
    Step,
    UpgradeContext,
)
from .db import pgparse
from .db.backup import remove_leftovers
from .db.migrations import upgrade_completed
from .errors import MaintError
from .gates import processes, web
from .gates.rewrite import patch_in_place
from .gates.text import command
from .installed import read_installed, record_installed
from .journal import Journal, unfinished, unfinished_matching
from .lock import node_lock
from .logfile import limits, run_log
from .output import Reporter
from .procedure import STEPS
from .roll import decision as roll_decision
from .rollback import keep, old_package, restore
from .rollback import point as restore_points
from .runner import Procedure
from .safepaths import check_settings_dirs
from .summary import summary_lines

__all__ = ["UpgradeContext", "abort", "also_abandoned", "rerun_context", "run_phases",
           "unfinished", "unfinished_matching"]

log = logging.getLogger(__name__)


def preload(ctx: UpgradeContext | None = None,
            phases: tuple[str, ...] = (BEFORE, AFTER)) -> None:
    """Load what the steps import only when they act, before any step runs:
    a broken python3-sh fails here, with the site up (cli.py: one line),
    and no import runs while the web server is down
    (tests/integration/test_step_imports.py).  `plan` and `db status`
    never call this, and never load them.

    With CTX, only what this run's PHASES use: dpkg's postinst starts
    while the web server is down, and loading what only the preinst or a
    cluster needs would lengthen the outage."""
    system.preload()
    processes.preload()  # psutil: the jails' processes, the consoles
    if ctx is None or (AFTER in phases and ctx.settings.role.runs_database):
        pgparse.available()  # pglast is optional: without it, nothing to load
    if ctx is None or (BEFORE in phases and not ctx.code_is_new):
        old_package.preload()  # python3-debian's DebFile: keep.prepare keeps the package
    if ctx is None or coordinated(ctx.settings):
        web.preload()  # http.client: the cluster's waits ask the slaves' web servers


def state_dir(settings: Settings) -> Path:
    return settings.path_of("state")


@contextmanager
def _presence(ctx: UpgradeContext, journal: Journal, steps: tuple[Step, ...]
              ) -> Iterator[Presence]:
    """The run's link to the cluster table, closed when the run ends."""
    presence = Presence(ctx.settings, ctx.reporter)
    presence.attach(journal, steps, code_is_new=ctx.code_is_new)
    ctx.cluster = presence
    try:
        yield presence
    finally:
        presence.close()


@contextmanager
def _attended_run(ctx: UpgradeContext) -> Iterator[None]:
    """What every run under the node lock needs around its steps.

    A closed terminal (SIGHUP) must not stop a step half-way: the run goes
    on, its output to the log.  Commands are recorded so that a later run
    can end what this one leaves if it is killed, and what an earlier,
    killed run left is ended before any step starts again.
    """
    run_dir = ctx.settings.path_of("run")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGHUP, _hangup)
    try:
        children.end_leftovers(run_dir, ctx.reporter)
        with children.tracked_run(run_dir):
            yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)


def _hangup(signum: int, frame: object) -> None:
    log.warning("hangup (terminal closed?) ignored: the upgrade goes on; see the log")


def run_phases(
    ctx: UpgradeContext, phases: tuple[str, ...], *, restart_finished: bool = False,
    before_unpack: bool = False,
) -> Journal:
    """Run PHASES of the OLD -> NEW upgrade under the node lock, with a log.

    A finished upgrade is left alone, unless restart_finished (dpkg's
    preinst starting it again, as for a reinstall): then it starts anew.
    BEFORE_UNPACK (dpkg's preinst): dpkg unpacks the new code next, which
    [cluster] unpack_together holds back until every node is ready.
    """
    settings = ctx.settings
    purpose = f"upgrade {ctx.old or '(none)'} -> {ctx.new} ({'+'.join(phases)})"
    if restore_points.attach(ctx) is not None:
        purpose = f"rollback {ctx.old} -> {ctx.new} ({'+'.join(phases)})"
    preload(ctx, phases)
    check_settings_dirs(settings)  # before the lock, the log and the journal
    if not Journal.file_for(state_dir(settings), ctx.old, ctx.new).exists():
        # A new upgrade: the log and the journal will have room (the
        # preflight's proof, before the log is opened in a full directory).
        preflight.check_state_room(ctx)
    with node_lock(settings.path_of("run"), purpose), run_log(
        settings.path_of("log"), f"upgrade-{ctx.old or 'none'}_to_{ctx.new}",
        **limits(settings),
    ) as log_path, _attended_run(ctx):
        journal = Journal.open(state_dir(settings), ctx.old, ctx.new, settings.role)
        if journal.is_complete and restart_finished:
            journal.archive()
            journal = Journal.open(state_dir(settings), ctx.old, ctx.new, settings.role)
        if journal.is_complete:
            ctx.upgrade_id = upgrade_id(journal)
            _record_completion(ctx, journal, again=True)  # a run killed or refused before it
            ctx.reporter.info(f"upgrade {ctx.old} -> {ctx.new} is already complete")
            return journal
        if journal.is_aborting:  # a killed abandonment is finished first
            with _presence(ctx, journal, STEPS) as presence:
                Procedure(ctx, journal, STEPS, presence.observe).abort()
        ctx.upgrade_id = upgrade_id(journal)
        # Saved before any step (a new journal: with its first step, so that
        # a failed preflight leaves no journal): a rerun must know whether
        # the code is new.
        _record_run(ctx, journal)
        if journal.path.exists():
            _save_before_steps(ctx, journal)
            # A decision made by an earlier run holds only for the release
            # it was made from: the tree, the package or [jail] may have changed.
            release_needs.confirm(ctx, journal)
        log.info("%s; role %s; log %s", purpose, settings.role, log_path)
        _remove_dump_leftovers(settings)
        with _presence(ctx, journal, STEPS) as presence:
            _site_up_first(ctx, journal, phases)
            ctx.learn_roll = roll_decision.attach  # when a step first asks
            if ctx.rollback is not None and AFTER in phases:
                for path in restore.restore_files(ctx):
                    ctx.reporter.info(f"rollback: {path} put back as the restore point kept it")
            try:
                Procedure(ctx, journal, STEPS, presence.observe).run(phases)
                if before_unpack and (waited := wait_for_every_before_phase(ctx)):
                    ctx.reporter.info(waited)
            except MaintError as exc:
                if exc.resume is None and journal.is_in_progress and journal.path.exists():
                    exc.resume = ctx.resume  # the journal's own write failed (a full disk)
                exc.resume = restart_if_nothing_to_resume(ctx, journal, exc.resume)
                raise
        if journal.is_complete:
            _record_completion(ctx, journal)
            for line in summary_lines(journal, STEPS):
                ctx.reporter.info(line)
            ctx.reporter.info(f"log: {log_path}")
        return journal


def _site_up_first(ctx: UpgradeContext, journal: Journal, phases: tuple[str, ...]) -> None:
    """What a before-phase does while the site still serves."""
    try:
        if BEFORE in phases and not any(journal.is_done(s) for s in journal.steps):
            preflight.check(ctx, STEPS)  # nothing is stopped before this passes
        if BEFORE in phases:
            keep.prepare(ctx)  # the restore point's files and package, site up
    except MaintError as exc:
        if ctx.cluster is not None and not any(journal.is_done(s) for s in journal.steps):
            ctx.cluster.refused()  # nodes waiting for this one stop now, not at their timeout
        exc.resume = restart_if_nothing_to_resume(ctx, journal, exc.resume)
        raise


# The context and the journal: what a run records of itself (_record_run)
# is what a rerun's context is made of (rerun_context), field for field.

def _record_run(ctx: UpgradeContext, journal: Journal) -> None:
    """How this upgrade goes on, for a rerun: how to resume, where the new
    migrations are, how the new code gets installed and whether it is."""
    journal.resume = ctx.resume
    if ctx.migrations_dir is not None:
        journal.migrations = str(ctx.migrations_dir)
    journal.package = ctx.package or journal.package
    journal.source = str(ctx.source) if ctx.source else journal.source
    journal.code_new = ctx.code_is_new


def rerun_context(settings: Settings, reporter: Reporter, journal: Journal,
                  options: RunOptions, *, code_is_new: bool) -> UpgradeContext:
    """The context of a rerun of JOURNAL's upgrade, as its last run recorded it."""
    return UpgradeContext(
        settings, reporter, old=journal.old, new=journal.new, options=options,
        code_is_new=code_is_new, resume=journal.resume, package=journal.package,
        migrations_dir=Path(journal.migrations) if journal.migrations else None,
        source=Path(journal.source) if journal.source else None)


def _save_before_steps(ctx: UpgradeContext, journal: Journal) -> None:
    """Save the journal before any step: a failure (a full state directory)
    names the way to resume, and still records that the new code is in
    place, or a rerun would take it for the old code's."""
    try:
        journal.save()
    except MaintError as exc:
        if ctx.code_is_new:
            patch_in_place(journal.path, _CODE_OLD, _CODE_NEW)
        exc.resume = exc.resume or ctx.resume
        raise


# The same number of bytes: replaced in place, it needs no new block.
_CODE_OLD, _CODE_NEW = b'"code_new": false', b'"code_new": true '


def source_command(ctx: UpgradeContext) -> str:
    """The `ivle-maint upgrade --source` command that runs CTX's upgrade
    again (its tree, its migrations, its options), quoted to be pasted
    whatever a path holds (gates.text.command)."""
    words: list[object] = ["ivle-maint", "upgrade", "--from", ctx.old, "--to", ctx.new,
                           "--source", ctx.source]
    if ctx.source is None or ctx.migrations_dir != ctx.source / "userdb" / "migrations":
        words += ["--migrations", ctx.migrations_dir] if ctx.migrations_dir else []
    return command(*words, *ctx.options.arguments())


def restart_if_nothing_to_resume(ctx: UpgradeContext, journal: Journal,
                                 resume: str | None) -> str | None:
    """The way forward when a failure leaves nothing to resume.

    An abandoned upgrade (the site given back on OLD, dpkg keeping OLD) or
    one that failed before its journal was written leaves `dpkg
    --configure -a` and `ivle-maint rerun` with nothing to do: the way on
    is to fix the cause and start the upgrade again.  A resume that does
    not need the journal (the source upgrade's own command) stays.
    """
    if resume is None or (not journal.is_aborted and journal.path.exists()):
        return resume
    if not resume.startswith(("dpkg ", "ivle-maint rerun")):
        return resume
    accept = " ".join(re.findall(r"--accept-(?:changed|class) [^\s,]+", resume))
    if resume.startswith("dpkg ") or "dpkg --configure" in resume:
        package = ctx.package or journal.package or "ivle"
        again = f"apt-get upgrade  (or: apt-get install {package}={ctx.new})"
        classes = re.findall(r"--accept-class ([^\s,]+)", resume)
        if classes:  # the new package's file, not on disk yet: accepted for the run
            keys = " ".join(classes)
            keys = f"'{keys}'" if len(classes) > 1 else keys
            return f"check the migration, then run the upgrade again accepting its class: " \
                f"{ACCEPT_CLASS_ENV}={keys} {again}"
        if accept:  # dpkg cannot pass the option: accepted beforehand, on the files on disk
            return f"ivle-maint db migrate {accept}, then run the upgrade again: {again}"
    elif ctx.source is not None:
        again = source_command(ctx)
    else:
        again = f"ivle-maint upgrade --from {ctx.old} --to {ctx.new}"
    if accept:
        return f"{again} {accept}"
    return f"fix the cause, then run the upgrade again: {again}"


def upgrade_id(journal: Journal) -> str:
    """Names one run of an upgrade: a rerun keeps it, a reinstall gets a new one.

    The journal's recorded random identity (gates.clock: never a wall time);
    a journal from before identities keeps the name it was given then."""
    return f"{journal.old}->{journal.new}@{journal.ident or int(journal.created)}"


def _record_completion(ctx: UpgradeContext, journal: Journal, *, again: bool = False) -> None:
    """What follows a completed upgrade: installed.json (the next upgrade's
    baseline reads it) and the dumps' pins.  AGAIN: the next run of a
    completed upgrade (dpkg --configure -a, rerun) repairs what a run killed
    or refused between the journal's completion and these left undone."""
    try:
        if not again or (ctx.code_is_new and _installed_version(ctx) != journal.new):
            record_installed(ctx)
        _unpin_backups(ctx)
        _restore_points_after(ctx)
    except MaintError as exc:
        exc.resume = exc.resume or ctx.resume
        raise


def _restore_points_after(ctx: UpgradeContext) -> None:
    """A completed rollback lets its point go; a completed upgrade stamps
    its own and commits those [rollback]'s limits let go."""
    point = ctx.rollback
    if point is not None:
        point.update(lambda p: setattr(p, "rolled_back", True))
        return
    for done in restore_points.completed(ctx.settings, ctx.upgrade_id, ctx.new):
        ctx.reporter.info(f"committed the restore point of {done.old} -> {done.new} "
                          "([rollback] limits)")


def _installed_version(ctx: UpgradeContext) -> object:
    try:
        record = read_installed(ctx.settings)
    except MaintError:  # damaged: written again
        return None
    return record.get("version") if isinstance(record, dict) else None


def _remove_dump_leftovers(settings: Settings) -> None:
    """A killed run's partial dump and password file go on the next run."""
    remove_leftovers(settings.path_of("backup"))


def _unpin_backups(ctx: UpgradeContext) -> None:
    """The upgrade's first dump stays only as the last completed upgrade's."""
    if not ctx.settings.role.runs_database:
        return
    unfinished = [upgrade_id(j) for j in Journal.unfinished(state_dir(ctx.settings))]
    upgrade_completed(ctx.settings, ctx.upgrade_id, unfinished)


def abort(ctx: UpgradeContext) -> list[str]:
    """Bring back what an unfinished BEFORE phase stopped (dpkg abort-upgrade)."""
    preload()
    with node_lock(ctx.settings.path_of("run"), f"abort upgrade to {ctx.new}"), \
            _attended_run(ctx):
        journal = Journal.open(state_dir(ctx.settings), ctx.old, ctx.new, ctx.settings.role)
        if not journal.is_unfinished:
            return []
        if journal.is_in_progress and not journal.steps:
            return []
        with _presence(ctx, journal, STEPS) as presence:
            undone = Procedure(ctx, journal, STEPS, presence.observe).abort()
        ctx.reporter.info(f"upgrade {ctx.old} -> {ctx.new} abandoned")
        return undone


def also_abandoned(settings: Settings, journal: Journal) -> list[Journal]:
    """What abandoning JOURNAL gives back too: the unfinished upgrades from
    its OLD whose new code never came.  JOURNAL had taken them over
    (journal.taken_over), and its abandonment gave back the site they took:
    they are abandoned with it, or their hold would outlive it."""
    return [j for j in unfinished_matching(settings, old=journal.old)
            if not j.code_new and j.path != journal.path]
