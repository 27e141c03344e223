"""`ivle-maint rollback`: choose the way back, say why, then let dpkg put
the kept package back; its maintainer scripts run IVLE's procedure as a
rollback (rollback/restore.py), journaled and resumable like an upgrade.
Then check, one line each, that the node is really back."""

from __future__ import annotations

from .. import system
from ..config import Settings
from ..db.marker import applied, exists
from ..db.session import session
from ..dpkg import UNPACKED, dpkg_record, package_version
from ..errors import MaintError
from ..gates.text import ivle_maint
from ..journal import Journal
from ..lock import node_lock, rollback_lock
from ..output import Reporter
from . import database as db
from .checks import run_checks, table_lines
from .choose import CODE_ONLY, Way, choose
from .differences import summary
from .old_package import KeptPackage, verify
from .point import RestorePoint
from .restore import admin_params, fill_params, restored_name

DPKG_RESUME = "dpkg --configure -a  (or: ivle-maint rerun)"


def way_for(settings: Settings, reporter: Reporter, point: RestorePoint) -> Way:
    if not settings.role.runs_database:
        return Way(CODE_ONLY, "this node has no database (the master's rollback decides "
                   "it); its code, configuration and jails go back", ())
    with session(settings, reporter, None) as s:
        keys = applied(s.conn) if exists(s.conn) else {}
    return choose(point, keys)


def preview_loss(settings: Settings, reporter: Reporter, point: RestorePoint) -> None:
    """Restore the dump beside the live database (site up: the outage does
    not wait for it) and show what replacing the live one would lose."""
    dump = point.check_dump()
    params = admin_params(settings)
    restored = restored_name(params.dbname, point)
    made = db.whole_copy(params, dump, restored, fill_as=fill_params(settings),
                         reporter=reporter)
    reporter.info(f"{made} (the site stays up meanwhile)")
    for line in summary(db.differences(params, params.dbname, restored, reporter=reporter)):
        reporter.info(f"would be lost: {line}")


def roll_back(settings: Settings, reporter: Reporter, point: RestorePoint, *,
              accept_data_loss: bool, dry_run: bool) -> int:
    where = f"rollback {point.new} -> {point.old} (restore point of {point.upgrade})"
    run_dir = settings.path_of("run")
    # The rollback lock from start to end (a second rollback is refused at
    # once); the node lock until dpkg runs, whose maintainer scripts run the
    # hooks that take it themselves: held across dpkg, it would refuse them.
    # Meanwhile the rollback lock refuses it to every other process (lock.py).
    with rollback_lock(run_dir, where) as hooks_env:
        with node_lock(run_dir, where):
            chosen = _choose(settings, reporter, point, where,
                             accept_data_loss=accept_data_loss, dry_run=dry_run)
        if isinstance(chosen, int):
            return chosen
        way, package, argv = chosen
        env = {"IVLE_MAINT_CONF": str(settings.path), "DEBIAN_FRONTEND": "noninteractive",
               **hooks_env}
        if accept_data_loss:
            env["IVLE_MAINT_ACCEPT_DATA_LOSS"] = "1"
        reporter.info(f"running {' '.join(argv)}")
        done = system.run(argv, env=env, on_line=lambda line: reporter.info(f"  {line}"))
        if not done.ok:
            raise MaintError(f"{argv[0]} failed (exit status {done.exit_code}) during the "
                             f"rollback to {point.old}", resume=DPKG_RESUME)
        results = run_checks(settings, reporter, point, package.package if package else
                             _package_name(point), full=way.full)
    reporter.info(f"{where}: checks")
    for line in table_lines(results):
        reporter.info(line)
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise MaintError(f"rolled back, but not every check passed: {', '.join(failed)}")
    reporter.info(f"{where}: done; the node serves {point.old} again")
    return 0


def _choose(settings: Settings, reporter: Reporter, point: RestorePoint, where: str, *,
            accept_data_loss: bool, dry_run: bool
            ) -> int | tuple[Way, KeptPackage | None, list[str]]:
    """The way back, said, and the command that takes it; an exit status
    when there is nothing to run (nothing to roll back, not accepted, a dry run)."""
    _refuse_other_runs(settings, reporter, point)
    if _already_at(settings, point):
        reporter.info(f"nothing to roll back: {_package_name(point)} {point.old} is "
                      f"installed and no upgrade to {point.new} is unfinished")
        return 0
    way = way_for(settings, reporter, point)
    reporter.info(f"{where}: {way.kind}: {way.why}")
    if way.full:
        preview_loss(settings, reporter, point)
        if not accept_data_loss and not dry_run:
            reporter.info("nothing changed; to roll back, losing the rows above: "
                          f"{ivle_maint('rollback', '--accept-data-loss')}")
            return 1
    package = KeptPackage.from_json(point.package) if point.package else None
    if package is not None:
        verify(package)
        argv = ["dpkg", "-i", str(package.path)]
    else:
        name = _package_name(point)
        argv = ["apt-get", "install", "-y", "--allow-downgrades", f"{name}={point.old}"]
        reporter.info(f"no package kept (a source install, or kept by an older "
                      f"ivle-maint): {' '.join(argv)}")
    if dry_run:
        reporter.info(f"dry run: would run {' '.join(argv)}")
        return 0
    return way, package, argv


def _refuse_other_runs(settings: Settings, reporter: Reporter, point: RestorePoint) -> None:
    """A rollback under way whose old code dpkg has unpacked is resumed by
    dpkg; one whose package dpkg never unpacked (a run killed in dpkg's
    preinst or unpack leaves it half-installed, which `dpkg --configure -a`
    passes over) by installing the package again, as this run goes on to."""
    for journal in Journal.unfinished(settings.path_of("state")):
        if (journal.old, journal.new) != (point.new, point.old):
            continue
        name = _package_name(point)
        record = dpkg_record(name)
        if record is not None and not (record[1] == point.old and record[0] in UNPACKED):
            reporter.info(f"the rollback {point.new} -> {point.old} is under way and dpkg has "
                          f"{name} {record[1]} {record[0]}: installing {point.old} again")
            return
        raise MaintError(f"the rollback {point.new} -> {point.old} is under way",
                         resume=DPKG_RESUME)


def _package_name(point: RestorePoint) -> str:
    return point.package_name or "ivle"


def _already_at(settings: Settings, point: RestorePoint) -> bool:
    """dpkg has the point's version and nothing of its upgrade is left (the
    upgrade was abandoned before its new code was unpacked)."""
    if not point.package_name:
        return False
    try:
        installed = package_version(point.package_name)
    except MaintError:
        return False
    unfinished = [j for j in Journal.unfinished(settings.path_of("state"))
                  if (j.old, j.new) == (point.old, point.new)]
    return installed == point.old and not unfinished

