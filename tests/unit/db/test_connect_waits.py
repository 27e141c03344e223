"""Which failed connections db.connect waits out (tests/integration/
test_rollback_database.py swaps a database under a connecting node)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.db.connect import RENAMED_AWAY_SECONDS, reason, worth_waiting

NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
EARLY = st.floats(0, RENAMED_AWAY_SECONDS, exclude_max=True)
LATE = st.floats(RENAMED_AWAY_SECONDS, 3600)


def fatal(text: str) -> str:
    """The one line reason() makes of libpq's message for TEXT."""
    return reason(Exception(f'connection to server on socket "/run/x" failed: FATAL:  {text}'))


@given(NAMES, EARLY, LATE)
def test_a_database_renamed_away_is_waited_for_briefly(name, early, late):
    text = fatal(f'database "{name}" does not exist')
    assert worth_waiting(text, early) and not worth_waiting(text, late)


@given(NAMES, st.floats(0, 3600))
def test_a_database_closed_to_connections_is_waited_for(name, waited):
    assert worth_waiting(fatal(f'database "{name}" is not currently accepting connections'),
                         waited)


@given(NAMES, EARLY)
def test_a_missing_role_or_a_refused_password_fails_at_once(name, waited):
    for text in (f'role "{name}" does not exist',
                 f'password authentication failed for user "{name}"',
                 f'no pg_hba.conf entry for host "[local]", user "{name}", database "x"'):
        assert not worth_waiting(fatal(text), waited), text
