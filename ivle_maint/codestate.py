"""Whether an unfinished upgrade's new code is in place, for a rerun.

A run killed before the code changed (dpkg's preinst, or `ivle-maint
upgrade --source` before ./setup.py install finished) leaves a journal
whose after-phase must not run: the old code would serve the new schema.
dpkg's own record of the package is asked first; without one, the journal
says whether a run that had the new code in place ever worked on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .dpkg import UNPACKED, dpkg_record
from .gates.text import ivle_maint
from .journal import Journal
from .procedure import AFTER, STEPS
from .rollback.point import for_rollback
from .versions import is_downgrade


@dataclass(frozen=True)
class CodeState:
    in_place: bool
    evidence: str  # for the message: what says so
    install: str  # the command that installs NEW's code and finishes the upgrade
    dpkg_owed: bool = False  # dpkg still has to configure the package


def new_code_state(journal: Journal, settings: Settings | None = None) -> CodeState:
    """Is NEW's code installed on this node, and if not, what installs it
    (a rollback's: `ivle-maint rollback`, from the package its restore
    point keeps on this node; the repository may have dropped it)."""
    new, old = journal.new, journal.old
    if journal.package:
        install = f"apt-get install {journal.package}={new}"
        if settings is not None and is_downgrade(old, new) and \
                for_rollback(settings, old, new) is not None:
            install = ivle_maint("rollback")
        record = dpkg_record(journal.package)
        if record is not None:
            status, version = record
            seen = f"dpkg has {journal.package} {version} {status}"
            if version == new and status in UNPACKED:
                return CodeState(True, seen, install, dpkg_owed=status != "installed")
            return CodeState(False, seen, install)
        if journal.code_new:
            return CodeState(True, "its postinst ran", install)
        return CodeState(
            False, f"only its preinst ran and dpkg has no record of {journal.package}",
            f"install {new}'s code, then: ivle-maint hook --package-version {new} "
            f"postinst configure {old}",
        )
    if journal.source:
        install = journal.resume
        if journal.code_new:
            return CodeState(True, f"./setup.py install in {journal.source} completed", install)
        return CodeState(False, f"./setup.py install in {journal.source} never completed",
                         install)
    # `ivle-maint upgrade` without --source: the person put the code in place
    # (a journal older than this record: an after-phase step says so too).
    after = {s.name for s in STEPS if s.phase == AFTER}
    in_place = journal.code_new or bool(after & set(journal.steps))
    return CodeState(in_place, "recorded by the run that started the upgrade",
                     f"install {new}'s code, then: ivle-maint upgrade --from {old} --to {new}")
