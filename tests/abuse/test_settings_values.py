"""Settings values that configobj's Validator passes but their users cannot
take: each is refused when the settings are read (one line naming the file
and the key, exit 2), before anything stops; and the most the settings
gate passes works everywhere the value goes, in a whole upgrade.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from configobj import ConfigObj
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import table
from ivle_maint.config import NUMBER_MAX, SETTINGS_SPEC
from support.abuse_helpers import one_error_line
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    journal,
    postinst,
    preinst,
    set_setting,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def _spec_keys(kind: str) -> list[tuple[str, str, str]]:
    """(section, key, check) of every setting of KIND (float, integer)."""
    found, section = [], ""
    for line in SETTINGS_SPEC.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1)
        elif match := re.match(rf"^(\w+) = ({kind}\(.*)$", line):
            found.append((section, match.group(1), match.group(2)))
    return found


def refused(site: Any, done: subprocess.CompletedProcess[str], prefix: str) -> str:
    """DONE's one error line, starting "ivle-maint: error: PREFIX", with
    exit 2 and nothing begun: the web server up, no journal."""
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert line.startswith(f"ivle-maint: error: {prefix}"), line
    assert site.service_running("apache2") and journal(site) == {}
    return line


NUMBERS = _spec_keys("float") + _spec_keys("integer")
_TOO_BIG_FLOAT = st.floats(min_value=NUMBER_MAX + 0.001, max_value=1e308).map(repr)
_TOO_BIG_INTEGER = st.integers(min_value=NUMBER_MAX + 1, max_value=10**40).map(str)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(NUMBERS), data=st.data())
def test_a_number_its_users_cannot_take_is_refused_before_anything_stops(
        site: Any, where: tuple[str, str, str], data: st.DataObject) -> None:
    """Before: 1e308 seconds, 1e7 (PostgreSQL's and poll()'s millisecond
    limit) or an output_lines of 10**19 were taken, then failed where used:
    `[database] old_transaction_age = 1e308` at the migrate step ("timestamp
    out of range"), `[commands] timeout = 1e308` or `[logs] output_lines =
    10**19` at the jail rebuild, migrations applied and the site down;
    `[services] timeout = 1e7` in a traceback at stop-web."""
    section, key, check = where
    value = data.draw(_TOO_BIG_FLOAT if check.startswith("float") else _TOO_BIG_INTEGER)
    original = site.maint_conf.read_text()
    set_setting(site, section, key, value)
    try:
        refused(site, preinst(site), f"{site.maint_conf}: [{section}/{key}]: ")
    finally:
        site.maint_conf.write_text(original)


def test_the_most_of_every_number_works_wherever_it_goes(site: Any) -> None:
    """Every number at NUMBER_MAX (or its own max): PostgreSQL's session
    settings, pg_dump's lock wait, poll(), the logs' bounds take it, and the
    upgrade completes as with the defaults."""
    for section, key, check in NUMBERS:
        spec_max = re.search(r"max=(\d+)", check)
        set_setting(site, section, key, spec_max.group(1) if spec_max else NUMBER_MAX)
    assert cli(site, "settings").returncode == 0
    done = preinst(site)
    assert done.returncode == 0, done.stderr
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert site.service_running("apache2")
    assert journal(site)["state"] == "complete"


PATHS = _spec_keys("path") + _spec_keys("optional_path") + _spec_keys("command")
_RELATIVE = st.one_of(
    st.sampled_from(["var/lib/ivle-maint", ".", "./state", "../x", "~/ivle", "   ",
                     "etc/ivle", "état", "-x"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\"'#,\\=[]"),
            min_size=1, max_size=20).map(str.strip).filter(lambda v: v and v.isprintable()),
)


def _run_from(site: Any, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **site.env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ivle_maint", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, check=False)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=_RELATIVE, empty=st.booleans())
def test_a_relative_path_setting_is_refused_before_anything_stops(
        site: Any, where: tuple[str, str, str], value: str, empty: bool) -> None:
    """Before: a relative path was taken from the directory each run started
    in: with `[paths] state = var/lib/ivle-maint`, the preinst (dpkg starts
    it in /) kept its journal in /var/lib/ivle-maint, and `ivle-maint
    services start web` run from root's home found no upgrade under way and
    started Apache mid-upgrade; an empty `[paths] log` was the working
    directory."""
    section, key, check = where
    if empty:
        value = "" if check.startswith("path(") else value
    if check.startswith("command("):  # a bare name is looked up on PATH: one with a slash
        value = f"bin/{value}"
    original = site.maint_conf.read_text()
    conf = ConfigObj(str(site.maint_conf), encoding="utf-8")
    conf.setdefault(section, {})[key] = value
    conf.write()
    try:
        done = _run_from(site, site.root, "hook", "preinst", "upgrade", "1.0", "1.1")
        line = refused(site, done, f"{site.maint_conf}: [{section}/{key}]: ")
        assert "is not an absolute path" in line
    finally:
        site.maint_conf.write_text(original)


_ODD_DIR = st.text(st.sampled_from(list(" '\"$`\\;&|*?~#,=[]()aé-")), min_size=1, max_size=12) \
    .map(str.strip).filter(lambda v: v not in ("", ".", ".."))
TOOLS = {"mountallusers": "ivle-mountallusers", "buildjail": "ivle-buildjail",
         "remakeuser": "ivle-remakeuser"}


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(names=st.lists(_ODD_DIR, min_size=3, max_size=3))
def test_a_program_the_preflight_checked_is_the_one_each_step_runs(
        node_factory: Any, names: list[str]) -> None:
    """[commands] at a path holding spaces, quotes or shell characters
    (generated): the preflight checked the value whole, the jail steps split
    it as a shell would, so `/opt/ivle tools/ivle-buildjail` passed the
    preflight and the rebuild, after the migrations with the site down,
    failed with "command not found: /opt/ivle".  Each is one program, the
    same everywhere: the upgrade completes, having run each."""
    site = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    conf = ConfigObj(str(site.maint_conf), encoding="utf-8")
    conf.setdefault("jails", {})["run_mountallusers"] = "true"
    ran = site.root / "ran"
    for (key, tool), name in zip(TOOLS.items(), names, strict=True):
        where = site.root / "opt" / key / name
        where.mkdir(parents=True)
        for directory in (where, *where.parents):
            if directory == site.root:
                break
            directory.chmod(0o755)
        program = where / tool
        program.write_text(f"#!/bin/sh\necho {tool} >> '{ran}'\n"
                           f"exec '{site.commands[tool]}' \"$@\"\n")
        program.chmod(0o755)
        conf.setdefault("commands", {})[key] = str(program)
    conf.write()
    done = preinst(site)
    assert done.returncode == 0, done.stderr
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert site.service_running("apache2") and journal(site)["state"] == "complete"
    assert set(ran.read_text().split()) == set(TOOLS.values())


_NODE_NAMES = st.one_of(
    st.sampled_from(["web 1", "web\u00a01", " web1", "a" * 254, "web\u200b1", "wéb-1", "a" * 253]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12),
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=_NODE_NAMES)
def test_a_node_name_the_settings_take_is_one_the_cluster_table_takes(
        site: Any, name: str) -> None:
    """`[node] name = web 1` (generated: spaces of any kind, invisible
    characters, 254 characters) was taken, then the node's own row was
    refused by every reader of ivle_maint_nodes (the row gate): taken as a
    node that may serve old code, so a master waited for it until
    slaves_timeout, and the advised `cluster refresh` wrote the same name
    again.  Now a name either is refused when the settings are read (one
    line naming it, exit 2), or its row is one the gate takes."""
    original = site.maint_conf.read_text()
    conf = ConfigObj(str(site.maint_conf), encoding="utf-8")
    conf["node"]["name"] = name
    conf.setdefault("cluster", {})["coordinate"] = "always"
    conf.write()
    try:
        done = cli(site, "cluster", "register")
        if done.returncode == 2:
            line = one_error_line(done)
            assert line.startswith(f"ivle-maint: error: {site.maint_conf}: [node/name]: "), line
            return
        assert done.returncode == 0, done.stderr
        with closing(site.connect()) as conn:
            rows = table.nodes(conn)
            with conn, conn.cursor() as cur:
                cur.execute(f"DELETE FROM {table.NODES}")
        assert [row.name for row in rows] == [name.strip()]
        # The sandbox's IVLE has no version ivle-maint or dpkg knows: its row
        # says it serves an unknown one (taken as older than any), is one the
        # row gate takes (it was told as "not one ivle-maint writes"), and the
        # command says how to give the version.
        assert rows[0].invalid is None, rows[0].invalid
        assert (rows[0].version, rows[0].serving) == (None, table.UNKNOWN)
        assert "cluster register --version VERSION" in done.stderr, done.stderr
        assert "service running an unknown version" in done.stderr, done.stderr
    finally:
        site.maint_conf.write_text(original)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(section=st.sampled_from(["database", "usrmgt"]),
       port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)).map(str))
def test_an_ivle_conf_port_tcp_has_not_is_refused_naming_the_key(
        site: Any, section: str, port: str) -> None:
    """ivle.conf's `[database] port = 70000` (or 0, -5) was taken, then the
    preflight's connection failed, exit 1, in libpq's words naming neither
    the file nor the key."""
    original = site.ivle_conf.read_bytes()
    conf = ConfigObj(str(site.ivle_conf))
    conf.setdefault(section, {})["port"] = port
    conf.write()
    try:
        refused(site, preinst(site), f"{site.ivle_conf}: [{section}/port]: ")
    finally:
        site.ivle_conf.write_bytes(original)


_PLAIN = st.characters(blacklist_categories=("Cs",), blacklist_characters="'\"\n\r")
IVLE_CONF_TEXTS = [(("paths",), k) for k in ("prefix", "data", "share", "lib")] + \
    [(("paths", "jails"), k) for k in ("mounts", "src", "template", "template_build")] + \
    [(("database",), k) for k in ("host", "name", "username", "password")] + \
    [(("media",), "version"), (("usrmgt",), "magic")]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(IVLE_CONF_TEXTS),
       value=st.lists(st.text(_PLAIN, max_size=8), min_size=2, max_size=2).map(
           lambda parts: f"/srv/{parts[0]}\0{parts[1]}"),
       command=st.sampled_from([("hook", "preinst", "upgrade", "1.0", "1.1"),
                                ("consoles", "list"), ("mounts", "list")]))
def test_a_nul_in_ivle_conf_is_one_line_naming_it_before_anything_stops(
        site: Any, where: tuple[tuple[str, ...], str], value: str,
        command: tuple[str, ...]) -> None:
    """A NUL in ivle.conf's [paths] (generated, anywhere in any value) was a
    ValueError traceback ("embedded null byte") wherever a path was used:
    the preflight, `consoles list`, `mounts list`."""
    sections, key = where
    original = site.ivle_conf.read_bytes()
    conf = ConfigObj(str(site.ivle_conf), encoding="utf-8")
    section = conf
    for name in sections:
        section = section.setdefault(name, {})
    section[key] = value
    conf.write()
    try:
        refused(site, cli(site, *command), f"{site.ivle_conf}: [")
    finally:
        site.ivle_conf.write_bytes(original)
