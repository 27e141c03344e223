"""upgrade.py's way forward when a failure leaves nothing to resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ivle_maint.upgrade import restart_if_nothing_to_resume


def way_on(resume: str) -> str | None:
    ctx: Any = SimpleNamespace(package="ivle", new="1.1", old="1.0", source=None)
    journal: Any = SimpleNamespace(is_aborted=True, path=Path("/nonexistent"), package="ivle")
    return restart_if_nothing_to_resume(ctx, journal, resume)


def test_a_refused_class_under_dpkg_is_accepted_through_the_environment():
    assert way_on("dpkg --configure -a --accept-class 20100101-01") == (
        "check the migration, then run the upgrade again accepting its class: "
        "IVLE_MAINT_ACCEPT_CLASS=20100101-01 apt-get upgrade  (or: apt-get install ivle=1.1)")


def test_a_changed_file_under_dpkg_is_accepted_by_db_migrate_first():
    assert way_on("dpkg --configure -a --accept-changed 20090105") == (
        "ivle-maint db migrate --accept-changed 20090105, then run the upgrade again: "
        "apt-get upgrade  (or: apt-get install ivle=1.1)")
