"""The way back: code only exactly when every migration applied since the
restore point is additive; a model decides, Hypothesis draws the cases."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.db.migration_class import ADDITIVE, CLASSES
from ivle_maint.rollback.choose import CODE_ONLY, FULL, choose
from ivle_maint.rollback.point import RestorePoint

KEYS = [f"2009{n:04d}" for n in range(12)]


def point(marker: list[str] | None, classes: dict[str, str]) -> RestorePoint:
    return RestorePoint(Path("/nonexistent"), "1.0->1.1@x", "1.0", "1.1", "master",
                        marker=marker, classes=classes)


@given(before=st.sets(st.sampled_from(KEYS)), since=st.sets(st.sampled_from(KEYS)),
       classes=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(CLASSES)))
def test_code_only_exactly_when_every_migration_since_is_additive(before, since, classes):
    way = choose(point(sorted(before), classes), before | since)
    new = since - before
    model_full = any(classes.get(k) != ADDITIVE for k in new)
    assert way.kind == (FULL if model_full else CODE_ONLY)
    assert set(way.since) == new
    assert set(way.blocking) == {k for k in new if classes.get(k) != ADDITIVE}
    for key in way.blocking[:5]:  # the reason names what blocks a code-only rollback
        assert key in way.why


def test_a_migration_of_unknown_class_is_never_taken_for_additive():
    way = choose(point(["a"], {}), {"a", "b"})
    assert way.full and "b (class unknown)" in way.why


def test_an_upgrade_that_never_reached_migrate_keeps_the_database():
    way = choose(point(None, {}), {"a", "b"})
    assert way.kind == CODE_ONLY and not way.since
