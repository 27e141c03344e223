"""The environment policy (gates/environment.py) over generated environments."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.gates import environment

HOSTILE_NAMES = ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSFILE", "PGSERVICE",
                 "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGSYSCONFDIR", "PGAPPNAME",
                 "PGPASSWORD", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP",
                 "IFS", "BASH_ENV", "ENV", "CDPATH", "LANG", "LC_ALL", "LC_CTYPE", "LANGUAGE",
                 "PATH", "HOME", "SHELL", "TZ", "PERL5LIB", "GCONV_PATH"]
names = st.one_of(st.sampled_from(HOSTILE_NAMES + list(environment.PASS_THROUGH)),
                  st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"))
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                 max_size=40)
parents = st.dictionaries(names, values, max_size=30)
extras = st.dictionaries(st.sampled_from(sorted(environment.SET_BY_US)), values, max_size=3)
ALLOWED = {*environment.FIXED, "HOME", *environment.PASS_THROUGH, *environment.SET_BY_US}


@settings(max_examples=200, deadline=None)
@given(parents, extras)
def test_a_child_gets_the_fixed_values_and_only_listed_names(parent: dict[str, str],
                                                              extra: dict[str, str]) -> None:
    env = environment.child_env(parent, extra, home="/root")
    assert set(env) <= ALLOWED
    assert env["PATH"] == environment.SBIN_PATH
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"
    for name, value in env.items():
        if name in extra:
            assert value == extra[name]  # what ivle-maint sets wins
        elif name in environment.PASS_THROUGH:
            assert value == parent[name]
        elif name == "HOME":
            assert value == "/root"
    # libpq variables come from ivle-maint only, never from the parent.
    assert {n for n in env if n.startswith("PG")} <= set(extra)


@settings(max_examples=100, deadline=None)
@given(parents, names.filter(lambda n: n not in environment.SET_BY_US), values)
def test_a_name_ivle_maint_does_not_set_is_refused(parent: dict[str, str], name: str,
                                                  value: str) -> None:
    with pytest.raises(ValueError):
        environment.child_env(parent, {name: value})


@settings(max_examples=200, deadline=None)
@given(parents)
def test_ivle_maint_keeps_no_libpq_variable_of_its_own(parent: dict[str, str]) -> None:
    env = environment.process_env(parent)
    assert not any(n.startswith(("PG", "LD_", "PYTHON", "LC_")) for n in env if n != "LC_ALL")
    assert env["PATH"] == environment.SBIN_PATH and env["LC_ALL"] == "C.UTF-8"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.floats(0, 1e6), st.floats(0, 1e6))
def test_session_options_carry_exactly_three_settings(search_path: str, lock: float,
                                                      statement: float) -> None:
    """A search_path setting can never smuggle another -c into the startup packet."""
    try:
        options = environment.session_options(search_path, lock, statement)
    except ValueError:
        return
    words = options.split(" ")
    assert words[0::2] == ["-c"] * (len(words) // 2)
    assert [w.split("=", 1)[0] for w in words[1::2]] == [
        "search_path", "lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"]
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*(,[A-Za-z_][A-Za-z0-9_$]*)*",
                        words[1].split("=", 1)[1])
