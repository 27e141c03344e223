"""What the cluster waits decide from the rows they read (no database here)."""

from __future__ import annotations

from ivle_maint.cluster.table import NodeRow
from ivle_maint.cluster.waits import (
    _unconfirmed,
    in_use,
    jails_held,
    master_finished,
    newer_than_me,
    serving_old,
)


def row(name: str = "m", role: str = "master", *, version: str | None = "1.0",
        serving: str | None = "1.0", target: str | None = "1.1", phase: str = "after",
        step: str | None = "migrate", mounts: int | None = None,
        consoles: int | None = None) -> NodeRow:
    return NodeRow(name, role, "host", "id", version, serving, target, phase, step, None, None,
                   mounts=mounts, consoles=consoles)


def test_a_master_is_finished_only_once_it_serves_the_new_version():
    for step in ("migrate", "rebuild-jail", "remake-users"):
        assert not master_finished(row(version="1.1", step=step), "1.1")
    assert not master_finished(row(phase="failed", step="rebuild-jail"), "1.1")
    # restart-usrmgt done: the row says the master serves 1.1.
    assert master_finished(row(version="1.1", serving="1.1", step="restart-usrmgt"), "1.1")
    assert master_finished(row(version="1.1", serving="1.1", target=None, phase="idle",
                               step=None), "1.1")
    # Idle on the old version: it has not started.
    assert not master_finished(row(target=None, phase="idle", step=None), "1.1")
    # Finished an upgrade to another version: not the same tree.
    assert not master_finished(row(version="1.2", serving="1.2", target="1.2",
                                   step="restart-usrmgt"), "1.1")


def test_newer_than_me_names_newer_migrations_and_a_master_ahead():
    keys = ["20090101-01", "20100301-01"]
    assert newer_than_me([row()], {"20090101-01"}, keys, "1.1") == []
    # Older keys this release no longer ships are not a newer schema.
    assert newer_than_me([row()], {"20080101-01", *keys}, keys, "1.1") == []
    found = newer_than_me([row(version="1.2", target=None, phase="idle")],
                          {*keys, "20110101-01"}, keys, "1.1")
    assert found == ["the database has 1 migration(s) IVLE 1.1 does not ship (20110101-01)",
                     "m is on or upgrading to IVLE 1.2"]
    assert newer_than_me([row(target="1.1-2")], set(keys), keys, "1.1") == [
        "m is on or upgrading to IVLE 1.1-2"]
    assert newer_than_me([row(version="1.1 beta", target=None)], set(), keys, "1.1") == []


def test_jails_held_until_every_other_web_node_recorded_zero_in_its_upgrade():
    me = row("master")
    serving = row("s1", "slave", serving="1.0", phase="idle", target=None)
    stopping = row("s2", "slave", serving=None, phase="before", step="stop-consoles")
    free = row("s3", "slave", serving=None, phase="unpack", mounts=0, consoles=0)
    mounted = row("s4", "slave", serving=None, phase="failed", mounts=3, consoles=0)
    console = row("s5", "slave", serving=None, phase="failed", mounts=0, consoles=1)
    # Idle and down, with zeros from some earlier moment: it may mount any time.
    idle = row("s6", "slave", serving=None, phase="idle", target=None, mounts=0, consoles=0)
    # Down for another upgrade (a lagging slave's, to 1.0.1): its count holds.
    other = row("s7", "slave", serving=None, target="1.0.1", mounts=0, consoles=0)
    rows = [me, serving, stopping, free, mounted, console, idle, other]
    assert [r.name for r in jails_held(rows, "master")] == ["s1", "s2", "s4", "s5", "s6"]
    assert in_use(serving) == "not upgrading: its jails may be in use"
    assert in_use(stopping) == "jails not counted: not yet unmounted"
    assert in_use(mounted) == "3 jail mount(s), 0 console(s)"
    # A master alone, or a 'both' node checking itself, waits for nobody.
    assert jails_held([me], "master") == []
    assert jails_held([row("solo", "both", mounts=None)], "solo") == []


def test_a_rollback_waits_for_slaves_serving_anything_but_its_target():
    newer = row("s1", "slave", version="1.1", serving="1.1", target=None, phase="idle")
    back = row("s2", "slave", version="1.0", serving="1.0", target=None, phase="idle")
    down = row("s3", "slave", version="1.1", serving=None, target="1.0", phase="unpack")
    rows = [row("master"), newer, back, down]
    # An upgrade's rule (older code only) would let the 1.1 slave serve on.
    assert [r.name for r in serving_old(rows, "master", "1.0")] == []
    assert [r.name for r in serving_old(rows, "master", "1.0", rollback=True)] == ["s1"]
    # An idle row of 1.1 saying down confirms nothing in a rollback to 1.0.
    idle_down = row("s4", "slave", version="1.1", serving=None, target=None, phase="idle")
    assert _unconfirmed([*rows, idle_down], "master", "1.0", False) == []
    assert _unconfirmed([*rows, idle_down], "master", "1.0", True) == [idle_down]


def test_a_master_finished_its_rollback_only_once_it_serves_the_target():
    assert not master_finished(row(version="1.1", serving="1.1", target=None, phase="idle",
                                   step=None), "1.0")
    assert not master_finished(row(version="1.0", serving=None, target="1.0",
                                   step="restart-usrmgt"), "1.0")
    assert master_finished(row(version="1.0", serving="1.0", target="1.0",
                               step="restart-usrmgt"), "1.0")
