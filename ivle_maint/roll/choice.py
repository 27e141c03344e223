"""Does this release roll, one slave at a time behind the balancer?

A roll keeps the site up: the master migrates while the slaves serve the
old code, then each slave in turn leaves the balancer's pool, upgrades
and comes back.  That is safe only when the old code keeps working on
the new schema and in the jails as they are, so a release rolls when:

- [cluster] rolling (or --rolling, IVLE_MAINT_ROLLING) is not `never`;
- this node is in a coordinated cluster whose web nodes serving now
  outnumber [cluster] roll_batch (else taking a batch out of the pool
  takes the site down), and, on a web
  node, Apache serves its pool answer (the balancer's check: a slave it
  does not see leave would be stopped with requests still sent to it);
- every pending migration is `additive` (db/migration_class.py: the old
  code keeps working and no statement holds a lock the site would wait
  on), its class known: a database that cannot say what is pending
  cannot roll;
- the release needs no jail rebuild (release_needs.py): the jail template
  and the users' jails are shared by every slave, so a rebuild would put
  new code under the consoles of slaves still on the old.

Anything else gets IVLE's upgrade procedure, and the reason is said
before anything stops; with `always` it is refused there instead.

choose() is the rule, on facts gathered once (Facts): a pure function,
so the rule is tested on every combination.  The cluster's one decision
is settle()'s (roll/decision.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MaintError

NEVER, AUTO, ALWAYS = "never", "auto", "always"
ADDITIVE = "additive"


@dataclass(frozen=True)
class Facts:
    """What the rule looks at, each gathered by roll/decision.py."""

    mode: str                     # never, auto or always
    coordinated: bool             # this node is in the cluster table's cluster
    web_nodes: int                # web nodes whose row says they serve now
    pending: int                  # pending migrations (0: none)
    release_class: str | None     # their worst class; None: not known
    deciding: str = ""            # the migration and statement that decided it
    unknown_why: str = ""         # why the class is not known
    jail: bool = True             # the release needs a jail rebuild
    jail_why: str = ""
    rollback: bool = False        # going back to a restore point
    mode_from: str = "[cluster] rolling"  # where the mode was said, for a person
    out_of_pool_why: str = ""     # why this web node cannot leave a pool ("" if it can)
    batch: int = 1                # [cluster] roll_batch: slaves out of the pool at once


@dataclass(frozen=True)
class Choice:
    """Whether the release rolls, and why (a person reads it in the plan,
    the preflight and `cluster status`)."""

    rolling: bool
    why: str

    def __str__(self) -> str:
        return f"{'rolls' if self.rolling else 'does not roll'}: {self.why}"


def choose(facts: Facts) -> Choice:
    """The rule (module docstring), first reason first."""
    if facts.mode == NEVER:
        return Choice(False, f"{facts.mode_from} = never")
    if facts.rollback:
        return Choice(False, "a rollback goes back by IVLE's procedure")
    if not facts.coordinated:
        return Choice(False, "this node coordinates with no cluster ([cluster] coordinate)")
    if facts.out_of_pool_why:
        return Choice(False, facts.out_of_pool_why)
    if facts.web_nodes <= facts.batch:
        return Choice(False, f"{facts.web_nodes} web node(s) serving, and a roll takes "
                      f"{facts.batch} out of the pool at a time ([cluster] roll_batch): "
                      "none would be left to serve")
    if facts.pending and facts.release_class is None:
        return Choice(False, "the pending migrations' class is not known"
                      + (f" ({facts.unknown_why})" if facts.unknown_why else ""))
    if facts.pending and facts.release_class != ADDITIVE:
        return Choice(False, f"not additive: {facts.release_class}"
                      + (f", decided by {facts.deciding}" if facts.deciding else ""))
    if facts.jail:
        return Choice(False, "the release needs a jail rebuild"
                      + (f" ({facts.jail_why})" if facts.jail_why else "")
                      + ": the jail tree is shared by every slave, old and new")
    migrations = (f"every pending migration is additive ({facts.pending})" if facts.pending
                  else "no pending migration")
    return Choice(True, f"{migrations}, no jail rebuild, {facts.web_nodes} web nodes serving")


def refuse_unless_allowed(mode: str, choice: Choice, source: str) -> None:
    """`always` refuses a release that does not roll: before anything stops."""
    if mode == ALWAYS and not choice.rolling:
        raise MaintError(f"{source} = always, but this release does not roll: {choice.why}")
