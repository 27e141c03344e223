"""gates/names.py: a login is used only as one plain name."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.gates.names import plain_login

NAMES = st.one_of(st.text(max_size=8), st.text("ab-./\n\0", max_size=6),
                  st.integers(250, 260).map(lambda n: "é" * (n // 2)))


@settings(max_examples=60, deadline=None)
@given(NAMES)
def test_a_login_is_one_name_below_src_never_an_option_or_a_line(login):
    try:
        assert plain_login(login, "the login table") == login
    except MaintError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("the login table holds the login")
        return
    src = PurePosixPath("/srv/jails")
    assert PurePosixPath(os.path.normpath(src / login)).parent == src
    assert not login.startswith("-") and login.isprintable()
    assert len(login.encode()) <= 255


@pytest.mark.parametrize("login", ["alice", "a.b", "user0001", "o'brien", "ÿ"])
def test_ordinary_logins_pass(login):
    assert plain_login(login, "x") == login
