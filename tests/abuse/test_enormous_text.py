"""Text from outside that is enormous: a row's value a student wrote, quoted
whole by PostgreSQL in a migration's error; a line of a file quoted in a
settings error.  What ivle-maint writes to the terminal, the log and the
journal for it is bounded (gates.text.LINE_LIMIT: the start and the end of
the line, the count of what was cut between them), one printable line
each, and the run's own words after the value (the resume line, the
message's end) are still there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.gates.text import LINE_LIMIT
from ivle_sandbox import schema
from support.migration_site import fresh_site

REPO = Path(__file__).resolve().parents[2]
# A line's most: LINE_LIMIT characters of it, each escaped at most as
# \UNNNNNNNN (10), the cut's count and the sink's own head.
MOST = 10 * LINE_LIMIT + 200

HOSTILE = st.sampled_from(["x", "\x1b[2J", "\nivle-maint: ok\r", "\u202e", "\x9b1m", "\u200b"])


def assert_bounded(text: str, where: str) -> None:
    for line in text.split("\n"):
        assert len(line) <= MOST, f"{where}: a line of {len(line)} characters"
        assert line.isprintable(), f"{where}: {line[:200]!r}"


def _ivle_maint(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", "--config", str(config), *argv],
                          env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
                          cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.needs_postgres
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piece=HOSTILE, size=st.integers(2 * LINE_LIMIT, 1_000_000))
def test_a_rows_megabytes_in_a_migrations_error_are_cut_everywhere(
        postgres: Any, tmp_path_factory: pytest.TempPathFactory, piece: str, size: int) -> None:
    """A migration that casts a column a student writes fails on their
    value, which PostgreSQL quotes whole: the error line on stderr and the
    log's records are each bounded and printable, the message's end and
    the resume line kept."""
    site = fresh_site(postgres, tmp_path_factory.mktemp("big"), "big")
    try:
        site.settings()
        site.run_sql((site.migrations / "20090105.sql").read_text())
        conf = site.root / "etc" / "ivle-maint.conf"
        assert _ivle_maint(conf, "db", "baseline", "20090401-01").returncode == 0
        value = (piece * (size // len(piece) + 1))[:size]
        conn = site.connect()
        conn.autocommit = True
        with conn.cursor() as cur:  # the students' own nicks
            cur.execute("UPDATE login SET nick = %s", (value,))
        conn.close()
        site.add_migration("20100101-01.sql", "ALTER TABLE login ALTER COLUMN nick "
                           "TYPE integer USING nick::integer;\n")
        # -v: the log's records (logformat.SafeFormatter) on stderr too.
        done = _ivle_maint(conf, "-v", "db", "migrate")
        assert done.returncode == 1, done.stderr[:2000]
        assert_bounded(done.stderr, "stderr")
        [error] = [ln for ln in done.stderr.splitlines() if ln.startswith("ivle-maint: error:")]
        assert "characters cut]" in error, error[:2000]
        assert error.endswith("nothing of 20100101-01 was applied"), error[-300:]
        assert done.stderr.splitlines()[-1].startswith("ivle-maint: resume with: ")
    finally:
        schema.drop_database(postgres, site.dbname)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piece=HOSTILE, size=st.integers(LINE_LIMIT, 300_000))  # at most 3 bytes each: < 1 MiB
def test_a_settings_files_enormous_value_is_cut_in_its_error(
        tmp_path_factory: pytest.TempPathFactory, piece: str, size: int) -> None:
    """A settings file whose value is megabytes (under the 1 MiB it reads):
    one bounded printable error line, its end (what is wrong) kept, exit 2."""
    config = tmp_path_factory.mktemp("conf") / "ivle-maint.conf"
    value = (piece * (size // len(piece) + 1))[:size].replace("\n", " ").replace("\r", " ")
    config.write_text(f"[node]\nrole = {value}\n")
    done = _ivle_maint(config, "status")
    assert done.returncode == 2, done.stderr[:2000]
    assert_bounded(done.stderr, "stderr")
    [line] = done.stderr.splitlines()
    assert line.startswith("ivle-maint: error: ") and line.endswith("is unacceptable."), line[-300:]
