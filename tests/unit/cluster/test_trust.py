"""cluster/trust.py over generated cluster tables: which rows the master may
treat as down, which nodes may be forgotten, who is a second master."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import liveness
from ivle_maint.cluster import trust
from ivle_maint.cluster.table import NodeRow

VERSIONS = ["1.0", "1.1", "1.2", None, "garbage"]
PHASES = ["idle", "before", "unpack", "after", "waiting", "failed"]

rows = st.builds(
    NodeRow, name=st.sampled_from(["master", "slave1", "slave2", "slave3", "both1"]),
    role=st.sampled_from(["master", "slave", "both"]), host=st.just("h"),
    instance=st.just("i"), version=st.sampled_from(VERSIONS),
    serving=st.sampled_from(VERSIONS), target=st.sampled_from([None, "1.1", "1.2"]),
    phase=st.sampled_from(PHASES), step=st.sampled_from([None, "stop-web", "start-web"]),
    media=st.none(), note=st.none(), age=st.one_of(st.none(), st.floats(0, 10**6)),
    mounts=st.one_of(st.none(), st.integers(0, 3)),
    consoles=st.one_of(st.none(), st.integers(0, 3)))
seen = st.builds(trust.Seen, runner=st.sampled_from([None, *liveness.Verdict]),
                 answers=st.sampled_from([None, True, False]))


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, max_size=6), st.sampled_from(["1.1", "1.2"]))
def test_no_idle_web_row_of_old_code_is_ever_trusted_down(table, new):
    """Every other web node of old code is either serving (blocks), confirmed
    down by an upgrade (has a target), or unconfirmed (blocks too)."""
    unsure = trust.unconfirmed_down(table, "master", new)
    for row in table:
        if row.name == "master" or not row.has_web or not trust.older(row.version, new):
            assert row not in unsure
        elif row.serving is None and row.target is None:
            assert row in unsure


@settings(max_examples=200, deadline=None)
@given(rows, seen)
def test_a_node_that_may_be_alive_is_never_forgotten_silently(row, what):
    """Whatever its age: the server's clock may have jumped forward."""
    refusals = trust.forget_refusals(row, what)
    alive = (what.runner is liveness.Verdict.ALIVE
             or (row.has_web and (what.answers or (what.answers is None and bool(row.serving))))
             or (row.mounts or 0) > 0 or (row.consoles or 0) > 0
             or (row.phase != "idle" and what.runner is not liveness.Verdict.DEAD))
    assert bool(refusals) == alive
    assert all("\n" not in r for r in refusals)


@settings(max_examples=100, deadline=None)
@given(st.lists(rows, max_size=6), st.sampled_from(["master", "slave", "both"]))
def test_a_second_master_is_always_named(table, role):
    others = [r for r in table if r.role in ("master", "both") and r.name != "me"]
    said = trust.second_master(table, "me", role)
    assert (said is not None) == (role != "slave" and bool(others))
    if said:
        assert others[0].name in said and "cluster forget" in said


def test_an_install_time_row_saying_down_is_not_trusted():
    row = NodeRow("slave1", "slave", "h", "i", "1.0", None, None, "idle", None, None,
                  "installed 1.0", probe_url="http://127.0.0.1:80/")
    assert trust.unconfirmed_down([row], "master", "1.1") == [row]
    upgrading = NodeRow("slave1", "slave", "h", "i", "1.0", None, "1.1", "unpack", None, None,
                        None)
    assert trust.unconfirmed_down([upgrading], "master", "1.1") == []


@settings(max_examples=100, deadline=None)
@given(claims=st.integers(1, 6), order=st.randoms(use_true_random=False),
       version=st.sampled_from(["1.1", "2:1.0-3 beta", "1.1.r2"]))
def test_the_media_value_chosen_last_is_found_whatever_the_servers_clock(
        claims: int, order, version: str) -> None:
    """Claims for one version made one after another (each next_value of
    those before), listed in any order (chosen_at from a clock set back)."""
    from ivle_maint.cluster.media import _latest
    from ivle_maint.media.version import next_value

    made: list[str] = []
    for _ in range(claims):
        made.append(next_value(version, set(made)))
    listed = [(value, version) for value in made] + [("other", "9.9")]
    order.shuffle(listed)
    assert _latest(listed, version) == made[-1]


notes = st.sampled_from([None, "registered", trust.abandoned_note("1.1"),
                         trust.abandoned_note("1.2"), "upgraded 1.0 -> 1.1"])
barrier_rows = st.builds(
    NodeRow, name=st.just("slave1"), role=st.sampled_from(["master", "slave", "both"]),
    host=st.just("h"), instance=st.just("i"), version=st.sampled_from(VERSIONS),
    serving=st.sampled_from(VERSIONS), target=st.sampled_from([None, "1.1", "1.2"]),
    phase=st.sampled_from(PHASES), step=st.sampled_from([None, "stop-web", "unpack"]),
    media=st.none(), note=notes)


@settings(max_examples=300, deadline=None)
@given(barrier_rows, st.sampled_from(["1.1", "1.2"]))
def test_a_node_counts_ready_to_unpack_only_by_its_own_finished_before_phase(row, new):
    """[cluster] unpack_together: a row lets the others unpack only when its
    upgrade to NEW is past its before-phase (or it is idle on NEW); a row
    that failed before its code changed, or gave its upgrade up, stops them;
    anything else keeps them waiting.  Never both."""
    ready, lost = trust.past_before_phase(row, new), trust.gave_up(row, new)
    assert not (ready and lost)
    if ready:
        assert (row.target == new and row.phase in ("unpack", "after", "waiting")) or \
            (row.target is None and row.version == new)
    if row.target == new and row.phase in ("idle", "before"):
        assert not ready and not lost  # still stopping: wait for it
    if row.target not in (None, new):
        assert not ready and not lost  # another upgrade: not this one's news
    if row.target == new and row.phase == "failed" and row.version != new:
        assert lost  # failed before its unpack: it will not come
    if row.target is None and row.note == trust.abandoned_note(new) and row.version != new:
        assert lost  # given back on its old code: it will not come
