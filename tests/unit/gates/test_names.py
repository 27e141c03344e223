"""gates/names.py: a login is used only as one plain name."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.gates.names import plain_login

NAMES = st.one_of(st.text(max_size=8), st.text("ab-./\n\0 :", max_size=6),
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
    assert " " not in login and ":" not in login  # one word of the tool's failure line
    assert len(login.encode()) <= 255


@pytest.mark.parametrize("login", ["alice", "a.b", "user0001", "o'brien", "ÿ"])
def test_ordinary_logins_pass(login):
    assert plain_login(login, "x") == login


@settings(max_examples=50, deadline=None)
@given(login=st.sampled_from(["__base__", "__base_build__", "alice", "base", "x"]),
       template=st.sampled_from(["__base__", "base/inner", "../elsewhere", "", "."]))
def test_a_login_is_refused_exactly_when_its_jail_is_or_holds_the_template(tmp_path_factory,
                                                                          login, template):
    """src/LOGIN is, holds or lies in the template (real directories, a
    symlink in src too): refused; an unset template ('') refuses nothing."""
    src = tmp_path_factory.mktemp("src")
    (src / "x").symlink_to("__base__")
    given_template = (src / template) if template not in ("", ".") else Path(template)
    if template not in ("", "."):
        given_template.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(given_template) if template not in ("", ".") else None
    jail = os.path.realpath(src / login)
    clash = real is not None and (jail == real or jail.startswith(real + "/")
                                  or real.startswith(jail + "/"))
    try:
        plain_login(login, "the login table", src=src, not_users=[given_template])
    except MaintError as exc:
        assert clash, exc
        assert "\n" not in str(exc) and "no user's jail" in str(exc)
    else:
        assert not clash
