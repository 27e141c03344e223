"""The roll's rule on every combination of its facts (roll/choice.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.roll.choice import ALWAYS, NEVER, Facts, choose, refuse_unless_allowed

CLASSES = st.sampled_from([None, "additive", "locking", "destructive", "not proven"])
FACTS = st.builds(Facts, mode=st.sampled_from(["auto", "always", "never"]),
                  coordinated=st.booleans(), web_nodes=st.integers(0, 5),
                  pending=st.integers(0, 3), release_class=CLASSES,
                  deciding=st.sampled_from(["", "20100301-01 ALTER TABLE x DROP COLUMN y"]),
                  unknown_why=st.sampled_from(["", "no marker"]), jail=st.booleans(),
                  jail_why=st.sampled_from(["", "12 code files changed"]),
                  rollback=st.booleans(), mode_from=st.sampled_from(["[cluster] rolling",
                                                                     "--rolling"]),
                  out_of_pool_why=st.sampled_from(["", "its pool answer is not served"]),
                  batch=st.integers(1, 4))


def safe_to_roll(f: Facts) -> bool:
    """The module's rule, stated from the issue: the old code must keep
    working on the new schema and jails while the slaves take turns."""
    migrations_ok = f.pending == 0 or f.release_class == "additive"
    return (f.mode != NEVER and not f.rollback and f.coordinated and f.web_nodes > f.batch
            and migrations_ok and not f.jail and not f.out_of_pool_why)


@given(FACTS)
def test_a_release_rolls_exactly_when_every_condition_holds(facts: Facts) -> None:
    choice = choose(facts)
    assert choice.rolling == safe_to_roll(facts), (facts, choice)
    assert choice.why and "\n" not in choice.why
    if facts.pending and facts.release_class not in (None, "additive") and not choice.rolling \
            and facts.coordinated and facts.web_nodes > facts.batch and facts.mode != NEVER \
            and not facts.rollback and not facts.out_of_pool_why:
        assert facts.release_class in choice.why  # the class that stopped it is named
    if facts.mode == NEVER:
        assert choice.why == f"{facts.mode_from} = never"  # where it was said


@given(FACTS)
def test_always_refuses_what_does_not_roll_and_nothing_else(facts: Facts) -> None:
    choice = choose(facts)
    if facts.mode == ALWAYS and not choice.rolling:
        with pytest.raises(MaintError, match="= always, but this release does not roll"):
            refuse_unless_allowed(facts.mode, choice, "[cluster] rolling")
    else:
        refuse_unless_allowed(facts.mode, choice, "[cluster] rolling")
