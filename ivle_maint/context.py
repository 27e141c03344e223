"""What every step of IVLE's upgrade procedure is given, and what a step is.

A leaf module: the steps, the runner, the hooks and the CLI import it; it
imports nothing of theirs, so the import graph flows one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .config import IvleConf, Settings
    from .journal import Journal
    from .output import Reporter

T = TypeVar("T")

MASTER, SLAVE, BOTH = "master", "slave", "both"
BEFORE, AFTER = "before", "after"


@dataclass
class Outcome:
    """What a step did: one line for a person, numbers for the summary."""

    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of IVLE's upgrade procedure (ivle_maint/steps/<name>.py).

    BEFORE runs while the old code is still installed (dpkg's preinst),
    AFTER once the new code is in place (postinst).  `undo` gives the site
    back when the upgrade is abandoned after this step began; `serving`
    says what the node's service runs once this step is done: False
    nothing, True the new code, None unchanged (see serving below).
    `recheck`, for a BEFORE step, says what undid its effect since it was
    done ("" if nothing): the after-phase asks before it trusts the step,
    and runs it again if something did (the schema hold, gates/schema_hold.py).
    """

    name: str
    title: str
    role: str
    phase: str
    run: Callable[[UpgradeContext], Outcome] = field(compare=False, repr=False)
    undo: Step | None = None
    serving: bool | None = None
    recheck: Callable[[UpgradeContext], str] | None = field(default=None, compare=False,
                                                            repr=False)


def select_steps(role: str, phases: Iterable[str], steps: Sequence[Step]) -> list[Step]:
    """This node's steps, in order, for the given phases."""
    wanted = set(phases)
    return [s for s in steps if s.phase in wanted and role in (s.role, BOTH)]


def serving(role: str, journal: Journal, steps: Sequence[Step]) -> str | None:
    """The version this node's service runs, from the journal of its upgrade:
    NEW once its last step that starts the service is done, nothing once a
    step that stops it is, else OLD."""
    marks = [s for s in select_steps(role, (BEFORE, AFTER), steps) if s.serving is not None]
    if marks and journal.is_done(marks[-1].name):
        return journal.new
    if any(journal.is_done(s.name) for s in marks if s.serving is False):
        return None
    return journal.old


class ClusterLink(Protocol):
    """What the steps use of this run's link to the cluster's tables
    (cluster.presence.Presence)."""

    name: str
    enabled: bool
    journal: Journal | None

    def connection(self, wait: float | None = None) -> Any: ...

    def query(self, look: Callable[[Any], T]) -> T: ...

    def waiting(self, step: str, note: str) -> None: ...

    def preflight(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """The person's choices for one run: built once, from the command line
    (commands/upgrade.py) or, under dpkg, from its environment (hooks.py)."""

    allow_out_of_order: bool = False
    accept_changed: tuple[str, ...] = ()
    # Go ahead with the migrations while slaves serve the old code.
    migrate_while_serving: bool = False
    # End a killed ivle-maint's database session that still holds the
    # migration lock (db/lock.py), instead of only naming it.
    terminate_stale_lock: bool = False
    # stop or maintenance; empty: the environment or [web] (services/maintenance_page).
    during_upgrade: str = ""


@dataclass
class UpgradeContext:
    """Everything a step may need; built by the CLI or a hook."""

    settings: Settings
    reporter: Reporter
    old: str
    new: str
    options: RunOptions = field(default_factory=RunOptions)
    # True once the new code is on disk: the BEFORE phase then cannot learn
    # the old version's migrations from the files any more.
    code_is_new: bool = False
    migrations_dir: Path | None = None
    resume: str = "ivle-maint rerun"
    # Names this run of the upgrade (set from the journal): a rerun keeps
    # it, a reinstall of the same version gets a new one.
    upgrade_id: str = ""
    # This run's link to the cluster table (set by upgrade.run_phases).
    cluster: ClusterLink | None = None
    # The new version's migrations while the code on disk is still the old
    # one (dpkg's preinst, from dh_ivle_maint's manifest): the preflight
    # checks these; the steps still use `migrations`.
    new_migrations: Path | None = None
    # How NEW's code gets installed (recorded in the journal for a rerun):
    # the dpkg package whose maintainer scripts call us, or a source tree.
    package: str = ""
    source: Path | None = None

    # The options, as the steps, the preflight and the plan ask for them.
    @property
    def allow_out_of_order(self) -> bool:
        return self.options.allow_out_of_order

    @property
    def accept_changed(self) -> tuple[str, ...]:
        return self.options.accept_changed

    @property
    def migrate_while_serving(self) -> bool:
        return self.options.migrate_while_serving

    @property
    def terminate_stale_lock(self) -> bool:
        return self.options.terminate_stale_lock

    @property
    def during_upgrade(self) -> str:
        return self.options.during_upgrade

    @cached_property
    def ivle_conf(self) -> IvleConf:
        return self.settings.ivle_conf()

    @property
    def migrations(self) -> Path:
        return self.migrations_dir or self.settings.path_of("migrations")

    @property
    def preflight_migrations(self) -> Path:
        """The migrations the preflight checks: the new version's."""
        return self.new_migrations or self.migrations

    @property
    def journal(self) -> Journal | None:
        """This run's journal, when the cluster link follows one."""
        return self.cluster.journal if self.cluster is not None else None
