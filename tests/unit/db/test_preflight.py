"""db/preflight.py: the plan's release class lines."""

from __future__ import annotations

from ivle_maint.db import migration_class as mc
from ivle_maint.db.preflight import release_lines


def classes(*found: str) -> list[mc.MigrationClass]:
    return [mc.MigrationClass(f"2010010{n}-01", mc.Verdict(cls, "DROP TABLE", n))
            for n, cls in enumerate(found, 1)]


def test_the_release_class_is_named_with_the_migrations_that_decided_it() -> None:
    lines = release_lines(classes(mc.ADDITIVE, mc.DESTRUCTIVE, mc.LOCKING))
    assert lines[0].startswith("release class: destructive (additive: the old code keeps")
    assert lines[1:] == ["  decided by 20100102-01  destructive  line 2: DROP TABLE"]


def test_many_deciding_migrations_are_counted_not_listed() -> None:
    lines = release_lines(classes(*[mc.LOCKING] * 7))
    assert len(lines) == 7
    assert lines[-1] == "  and 2 more of this class (ivle-maint db classify)"
    assert release_lines([]) == []
