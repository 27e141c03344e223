"""Migration files are input: whatever their bytes, `db migrate` on a real
PostgreSQL refuses them in one line before anything runs, or applies each
once with the checksum of the bytes that ran."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ivle_maint import cli
from support.db_site import baselined_site
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

KEY = "20100101-01"
TABLE = "ivle_maint_migrations"
HEADS = ["", "-- ivle-maint: no-transaction\n", "BEGIN;\n", "\ufeff"]
BODY = "CREATE TABLE made_here (a int);\nINSERT INTO made_here VALUES (1), (2);\n"
ODD = ["\x00", "\ufeff", "\r", "\x0b", "\u2028", "\u200b", "\u00a0", "\uff1b", "'", "$$", ";"]


@pytest.fixture
def db(postgres: Any, tmp_path: Any) -> Iterator[Site]:
    with baselined_site(postgres, tmp_path) as site:
        yield site


def _cli(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = cli.main(["--config", str(site.root / "etc" / "ivle-maint.conf"), "db", *argv])
    return status, capsys.readouterr().err


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(head=HEADS[1], odd="\x00", at=0)
@example(head="", odd="\x00", at=BODY.index(", (2)"))  # the text after it would not run
@given(head=st.sampled_from(HEADS), odd=st.sampled_from(ODD), at=st.integers(0, len(BODY)))
def test_an_odd_character_anywhere_is_refused_before_anything_runs_or_applied_once(
        db: Site, capsys: pytest.CaptureFixture[str], head: str, odd: str, at: int) -> None:
    body = BODY[:at] + odd + BODY[at:]
    text = head + body + ("COMMIT;\n" if head == "BEGIN;\n" else "")
    db.query(f"DELETE FROM {TABLE} WHERE key = %s; DROP TABLE IF EXISTS made_here", [KEY])
    path = db.add_migration(f"{KEY}.sql", "")
    path.write_bytes(text.encode())
    status, err = _cli(db, capsys, "migrate", "--no-backup")
    assert "Traceback" not in err, err
    row = db.query(f"SELECT checksum FROM {TABLE} WHERE key = %s", [KEY])
    if status:
        assert err.startswith("ivle-maint: error: "), err
        assert row == [], err
        if head != HEADS[1]:  # one transaction: nothing of it stays
            assert not db.table_exists("made_here"), err
        if odd == "\x00":  # refused before anything ran, whatever the mode
            assert not db.table_exists("made_here"), err
    else:  # what ran is the whole text, and its checksum is recorded
        assert db.query("SELECT a FROM made_here ORDER BY a") == [(1,), (2,)], text
        assert row == [(hashlib.sha256(text.encode()).hexdigest(),)]
