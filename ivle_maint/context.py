"""What every step of IVLE's upgrade procedure is given, and what a step is.

A leaf module: the steps, the runner, the hooks and the CLI import it; it
imports nothing of theirs, so the import graph flows one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .roles import Role

if TYPE_CHECKING:
    from .config import IvleConf, Settings
    from .journal import Journal
    from .output import Reporter
    from .roll.choice import Choice
    from .rollback.point import RestorePoint

T = TypeVar("T")


class Phase(StrEnum):
    """When a step runs: BEFORE while the old code is still installed
    (dpkg's preinst), AFTER once the new code is in place (postinst)."""

    BEFORE = "before"
    AFTER = "after"


class RunEvent(StrEnum):
    """What the runner tells its observer (the cluster table follows the
    journal by it): a step's BEGIN, DONE and FAILED; the run's END and
    ABORTED (no step)."""

    BEGIN = "begin"
    DONE = "done"
    FAILED = "failed"
    END = "end"
    ABORTED = "aborted"


# The names the runner, the hooks and the command line still import.
MASTER, SLAVE, BOTH = Role.MASTER, Role.SLAVE, Role.BOTH
BEFORE, AFTER = Phase.BEFORE, Phase.AFTER


@dataclass
class Outcome:
    """What a step did: one line for a person, numbers for the summary."""

    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)


# What a step contributes beyond its action.  The preflight, the plan and
# the summary ask every step for its part; each report's parts come in the
# order of its enum below, a part's lines in the order of the procedure.


class PreflightStage(IntEnum):
    """The preflight's order: this node's jails and web server, the trees
    and the database the after-phase rewrites, ivle.conf, the state files,
    the cluster (only when coordinated)."""

    JAILS = 1
    WEB = 2
    JAIL_TREE = 3
    DATABASE = 4
    IVLE_CONF = 5
    STATE_FILES = 6  # after the upgrade's own records (journal, installed.json)
    CLUSTER = 7


@dataclass(frozen=True)
class Check:
    """A proof the preflight runs for a step while the site is still up:
    raises MaintError in one line (the rule: preflight.py's docstring)."""

    stage: PreflightStage
    run: Callable[[UpgradeContext], None] = field(compare=False, repr=False)


class PlanPart(IntEnum):
    """The plan's order, after its list of steps."""

    SKIPPED = 0  # the steps this release does not need (release_needs.py)
    DATABASE = 1
    WEB = 2


@dataclass(frozen=True)
class PlanLines:
    """What `ivle-maint plan` says of a step beyond its title: lines(ctx,
    what to call ctx.new_migrations in the output, None: its path)."""

    part: PlanPart
    lines: Callable[[UpgradeContext, str | None], list[str]] = field(compare=False, repr=False)


class SummaryPart(IntEnum):
    """The end-of-upgrade summary's order, after the web-down time."""

    DATABASE = 1
    COUNTS = 2
    DONE = 3


def _as_is(value: Any, metrics: Mapping[str, Any]) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Metric:
    """A line of the summary from what the step recorded (Outcome.metrics,
    kept in the journal): `  LABEL: shown`, `  LABEL` when shown is "",
    no line when it is None.  `show` gets the value of KEY and all the
    step's metrics; `when_done`: only once the step is done."""

    key: str
    label: str
    part: SummaryPart = SummaryPart.COUNTS
    show: Callable[[Any, Mapping[str, Any]], str | None] = field(
        default=_as_is, compare=False, repr=False)
    when_done: bool = False


@dataclass(frozen=True)
class ClusterWait:
    """What a step waits for in a cluster before it acts (cluster/waits.py):
    `wait(ctx, step name)` returns what it waited for ("" if nothing);
    `plan(ctx, the cluster's rows)` is the plan's line, or None."""

    wait: Callable[[UpgradeContext, str], str] = field(compare=False, repr=False)
    plan: Callable[[UpgradeContext, Sequence[Any]], str] | None = field(
        default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Step:
    """One step of IVLE's upgrade procedure (ivle_maint/steps/<name>.py):
    everything about it, so that adding a step touches its module and
    procedure.STEPS only (doc/developing.md, "Adding a step").

    BEFORE runs while the old code is still installed (dpkg's preinst),
    AFTER once the new code is in place (postinst).  `undo` gives the site
    back when the upgrade is abandoned after this step began; `serving`
    says what the node's service runs once this step is done: False
    nothing, True the new code, None unchanged (see serving below).  A
    step with serving False and an undo takes the service down until its
    undo is done: the summary's web-down time (downtime below).
    `recheck`, for a BEFORE step, says what undid its effect since it was
    done ("" if nothing): the after-phase asks before it trusts the step,
    and runs it again if something did (the schema hold, gates/schema_hold.py).
    `alongside` names the steps just before this one that it needs nothing
    from: it runs at the same time as they do (run_groups below).

    What the step adds to the reports: `programs`, IVLE's programs it runs
    (the preflight finds them); `checks`, the preflight's proofs of what
    it needs; `plan`, its lines in `ivle-maint plan`; `metrics`, its lines
    in the summary; `cluster_wait`, what it waits for in a cluster.
    """

    name: str
    title: str
    role: Role
    phase: Phase
    run: Callable[[UpgradeContext], Outcome] = field(compare=False, repr=False)
    undo: Step | None = None
    serving: bool | None = None
    recheck: Callable[[UpgradeContext], str] | None = field(default=None, compare=False,
                                                            repr=False)
    programs: Callable[[Settings], list[str]] | None = field(default=None, compare=False,
                                                             repr=False)
    checks: tuple[Check, ...] = field(default=(), compare=False, repr=False)
    plan: tuple[PlanLines, ...] = field(default=(), compare=False, repr=False)
    metrics: tuple[Metric, ...] = field(default=(), compare=False, repr=False)
    cluster_wait: ClusterWait | None = field(default=None, compare=False, repr=False)
    alongside: tuple[Step, ...] = field(default=(), compare=False, repr=False)


def run_groups(steps: Sequence[Step]) -> list[list[Step]]:
    """STEPS (in order) as the runner runs them: a step joins the group
    before it when it names every member of that group as `alongside`,
    so nothing runs beside a step it was not declared free of; every other
    step is a group of its own, which starts once the group before ends."""
    groups: list[list[Step]] = []
    for step in steps:
        free_of = {other.name for other in step.alongside}
        if groups and {member.name for member in groups[-1]} <= free_of:
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def select_steps(role: str, phases: Iterable[str], steps: Sequence[Step]) -> list[Step]:
    """This node's steps, in order, for the given phases."""
    wanted = set(phases)
    node = Role(role)
    return [s for s in steps if s.phase in wanted and node.runs(s.role)]


def downtime(steps: Sequence[Step]) -> tuple[str, str] | None:
    """(first, last): the service is down from step FIRST's start to step
    LAST's end, FIRST being the step that stops it (serving False) and LAST
    the one that undoes it; None when no step does."""
    for step in steps:
        if step.serving is False and step.undo is not None:
            return step.name, step.undo.name
    return None


def serving(role: str, journal: Journal, steps: Sequence[Step]) -> str | None:
    """The version this node's service runs, from the journal of its upgrade:
    NEW once its last step that starts the service is done, and every step
    before it (one run beside it, Step.alongside, may end later: a slave
    takes NEW from a master's row as "the master is done"), nothing once a
    step that stops it is, else OLD."""
    mine = select_steps(role, (BEFORE, AFTER), steps)
    marks = [s for s in mine if s.serving is not None]
    if marks and all(journal.is_done(s.name) for s in mine[:mine.index(marks[-1]) + 1]):
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

    @property
    def steps(self) -> Sequence[Step]:
        """IVLE's procedure, which this run's journal follows."""

    def waiting(self, step: str, note: str) -> None: ...

    def settle(self, timeout: float,
               serial: Callable[[Callable[[], Any]], Any] | None = None) -> None: ...

    def preflight(self) -> None: ...

    def refused(self) -> None: ...


# --accept-class under dpkg, which passes no command line (hooks.dpkg_options).
ACCEPT_CLASS_ENV = "IVLE_MAINT_ACCEPT_CLASS"
# A full rollback under dpkg (apt-get install ivle=OLD): what --accept-data-loss says.
ACCEPT_DATA_LOSS_ENV = "IVLE_MAINT_ACCEPT_DATA_LOSS"
# [cluster] unpack_together under dpkg (the playbook sets it): yes or no.
UNPACK_TOGETHER_ENV = "IVLE_MAINT_UNPACK_TOGETHER"
# [cluster] rolling under dpkg: auto, always or never.
ROLLING_ENV = "IVLE_MAINT_ROLLING"
ROLLING_CHOICES = ("auto", "always", "never")


@dataclass(frozen=True)
class RunOptions:
    """The person's choices for one run: built once, from the command line
    (commands/upgrade.py) or, under dpkg, from its environment (hooks.py)."""

    allow_out_of_order: bool = False
    accept_changed: tuple[str, ...] = ()
    # Pending migrations whose header's milder class is accepted over the one found.
    accept_class: tuple[str, ...] = ()
    # Go ahead with the migrations while slaves serve the old code.
    migrate_while_serving: bool = False
    # End a killed ivle-maint's database session that still holds the
    # migration lock (db/lock.py), instead of only naming it.
    terminate_stale_lock: bool = False
    # stop or maintenance; empty: the environment or [web] (services/maintenance_page).
    during_upgrade: str = ""
    # A full rollback may replace the database, losing what was written
    # since the restore point's dump (rollback/restore.py).
    accept_data_loss: bool = False
    # Unpack only once every node did its before-phase; None: [cluster]
    # unpack_together (cluster/waits.wait_for_every_before_phase).
    unpack_together: bool | None = None
    # auto, always or never; empty: [cluster] rolling (roll/choice.py);
    # and where the person said it, for a message.
    rolling: str = ""
    rolling_from: str = "--rolling"

    def arguments(self) -> list[str]:
        """The command-line options (`upgrade`, `db migrate`) that make these
        choices again, for a command printed to be pasted: the ones taken."""
        words = ["--allow-out-of-order"] if self.allow_out_of_order else []
        words += [w for key in self.accept_changed for w in ("--accept-changed", key)]
        words += [w for key in self.accept_class for w in ("--accept-class", key)]
        words += ["--migrate-while-serving"] if self.migrate_while_serving else []
        words += ["--terminate-stale-lock"] if self.terminate_stale_lock else []
        words += ["--during-upgrade", self.during_upgrade] if self.during_upgrade else []
        words += ["--rolling", self.rolling] if self.rolling else []
        return words


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
    # The restore point this run goes back to: OLD -> NEW undoes the upgrade
    # NEW -> OLD whose point is pinned here (set by upgrade.run_phases and
    # the plan: rollback/point.py for_rollback).
    rollback: RestorePoint | None = None
    # Whether OLD -> NEW rolls, once this run knows (roll/decision.py), and
    # how it learns it when a step first asks (set by upgrade.run_phases:
    # decision.attach, a database read, so a failure is that step's).
    roll_choice: Choice | None = None
    learn_roll: Callable[[UpgradeContext], object] | None = field(default=None, repr=False)

    # The options, as the steps, the preflight and the plan ask for them.
    @property
    def allow_out_of_order(self) -> bool:
        return self.options.allow_out_of_order

    @property
    def accept_changed(self) -> tuple[str, ...]:
        return self.options.accept_changed

    @property
    def accept_class(self) -> tuple[str, ...]:
        return self.options.accept_class

    @property
    def migrate_while_serving(self) -> bool:
        return self.options.migrate_while_serving

    @property
    def unpack_together(self) -> bool:
        chosen = self.options.unpack_together
        return bool(self.settings["cluster"]["unpack_together"]) if chosen is None else chosen

    @property
    def rolls(self) -> bool:
        """This upgrade rolls (roll/decision.py settled or attached it)."""
        if self.roll_choice is None and self.learn_roll is not None:
            self.learn_roll(self)
        return self.roll_choice is not None and self.roll_choice.rolling

    @property
    def rolling(self) -> str:
        """auto, always or never: the option, else [cluster] rolling."""
        return self.options.rolling or str(self.settings["cluster"]["rolling"])

    @property
    def terminate_stale_lock(self) -> bool:
        return self.options.terminate_stale_lock

    @property
    def accept_data_loss(self) -> bool:
        return self.options.accept_data_loss

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

    @property
    def steps(self) -> Sequence[Step]:
        """The procedure this run's journal follows (none without a link)."""
        return self.cluster.steps if self.cluster is not None else ()

