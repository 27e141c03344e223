"""Bad input: arguments of the single commands (upgrade --source, --from
and --to, db baseline, media set, a hand-made hook call) that name nothing
or are no version, and a malformed ivle-maint.conf or ivle.conf.

Each case: one error line, exit status 2 (bad input), and nothing done:
the site serving, ivle.conf (or the malformed file) byte for byte as it
was, nothing recorded in the database, no journal.  (Settings that others
can change: test_files_read_and_run.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox.releases import OLD, RELEASES
from support.abuse_helpers import assert_untouched, error_lines
from support.source_tree import source_tree
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    final_state,
    journal,
    marker_keys,
    preinst,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

NOBODY = 65534
OLD_KEYS = sorted(k.removesuffix(".sql") for k in OLD)


@pytest.fixture
def site(node_factory: Any) -> Any:
    """A single-machine IVLE at 1.0, serving, with one console."""
    return at_version_1_0(node_factory(users=2, consoles=1, role="both"))


def snapshot(site: Any) -> tuple[bytes, int]:
    st = site.ivle_conf.stat()
    return site.ivle_conf.read_bytes(), st.st_mtime_ns


def assert_nothing_done(site: Any, before: tuple[bytes, int]) -> None:
    assert snapshot(site) == before
    assert site.service_running("apache2") and site.service_running("ivle-usrmgt-server")
    assert site.console_pids() and site.mounts()
    assert marker_keys(site) == []
    assert journal(site) == {}


@pytest.mark.parametrize("source", ["/nonexistent/ivle", "empty directory", "a file"])
@pytest.mark.parametrize("to", [(), ("--to", "1.1")])
def test_upgrade_from_a_source_tree_that_is_not_one_is_refused_first(
        site: Any, tmp_path: Path, source: str, to: tuple[str, ...]) -> None:
    """With --to given, the before-phase would stop the site, then fail at
    './setup.py build': the tree is checked before anything."""
    if source == "empty directory":
        source, why = str(tmp_path), "no setup.py here; is this an IVLE source tree?"
    elif source == "a file":
        (tmp_path / "setup.py").write_text("#!/bin/sh\n")
        source, why = str(tmp_path / "setup.py"), "not a directory"
    else:
        why = "no such directory"
    before = snapshot(site)
    done = cli(site, "upgrade", "--from", "1.0", *to, "--source", source)
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: upgrade --source {source}: {why}"]
    assert_nothing_done(site, before)


@pytest.mark.parametrize("to", [(), ("--to", "1.1")])
def test_upgrade_from_a_relative_source_path_installs_it(site: Any, to: tuple[str, ...]) -> None:
    """`cd /root/src && ivle-maint upgrade --source ivle-1.1`: the journal, and
    the resume command a rerun prints, name the tree so that they work from
    any directory."""
    tree = source_tree(site, RELEASES["1.1"])
    env = {**os.environ, **site.env, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "ivle_maint", "upgrade", "--from", "1.0", *to,
                           "--source", tree.name], cwd=tree.parent, env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    state = final_state(site)
    assert state["installed"] == "1.1" and state["services"] == {"apache2": True,
                                                                 "ivle-usrmgt-server": True}
    assert journal(site)["source"] == str(tree)
    assert journal(site)["resume"].endswith(f" --source {tree}")


@pytest.mark.parametrize("through", ["bogus", "20991231-01", "2009-01-01.sql", "",
                                     f"{OLD_KEYS[-1]}\n"])
def test_db_baseline_of_no_shipped_migration_is_refused_and_records_nothing(
        site: Any, through: str) -> None:
    before = snapshot(site)
    done = cli(site, "db", "baseline", through)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert line.startswith("ivle-maint: error: db baseline: "), line
    assert_nothing_done(site, before)
    done = cli(site, "db", "baseline", OLD_KEYS[-1])  # the real one still works
    assert done.returncode == 0, done.stderr
    assert marker_keys(site) == OLD_KEYS


@pytest.mark.parametrize("version", ["1.1\nx", "1.1\x1b[2J", "1.1\u009b", "", "  ", "1.1 x",
                                     "\t1.1", "1.1/../x"])
def test_media_set_to_what_is_no_version_is_refused_and_ivle_conf_untouched(
        site: Any, version: str) -> None:
    """It would become '1.1_x' in the URLs of IVLE's static files: a value
    the administrator never asked for, recorded as used for ever."""
    before = snapshot(site)
    for args in (("media", "set", version), ("media", "set", "--force", version),
                 ("media", "show", "--for", version)):
        done = cli(site, *args)
        assert done.returncode == 2, (args, done.stderr)
        named = " ".join(a for a in args if a in ("media", "set", "show", "--for"))
        assert error_lines(done) == [f"ivle-maint: error: {named}: not a valid "
                                     f"version: {version!r}"]
        assert len(done.stderr.splitlines()) == 1
    assert not (site.state_dir / "media-versions.json").exists()
    assert_nothing_done(site, before)
    assert cli(site, "media", "set", "1.1").returncode == 0  # a version still works




@pytest.mark.parametrize("args", [("upgrade", "--from", "1.0", "--to", "1.1\n"),
                                  ("upgrade", "--from", "1.0\n", "--to", "1.1"),
                                  ("upgrade", "--from", "1.0", "--to", ""),
                                  ("plan", "--from", "1.0", "--to", "1.1 x"),
                                  ("cluster", "prepare", "--from", "1.0", "--to", "1.1\x1b[2J"),
                                  ("cluster", "register", "--version", "1.0\n"),
                                  ("pool", "ready", "--version", "1.1 x"),
                                  ("rerun", "--from", "1.0\n"),
                                  ("rerun", "--to", "1.1\x1b[2J")])
def test_a_version_that_is_none_is_refused_before_anything_is_named_after_it(
        site: Any, args: tuple[str, ...]) -> None:
    """As for `hook`: a journal, a log file and the resume line are named
    after the versions; a newline in one splits them (or names a second one)."""
    before = snapshot(site)
    done = cli(site, *args)
    assert done.returncode == 2, done.stderr
    bad = next(a for a in args if a in ("", "1.1\n", "1.0\n", "1.1 x", "1.1\x1b[2J"))
    option = args[args.index(bad) - 1]
    command = " ".join(args[:2]) if args[0] in ("cluster", "pool") else args[0]
    assert error_lines(done) == [f"ivle-maint: error: {command} {option}: not a valid version: "
                                 f"{bad!r}"]
    assert len(done.stderr.splitlines()) == 1
    assert_nothing_done(site, before)
    assert not site.maint_log_dir.exists() or not list(site.maint_log_dir.iterdir())


def test_a_version_with_a_newline_from_a_hand_made_hook_call_is_refused(node: Any) -> None:
    """It would name a second journal beside the real one ("1.0 -> 1.1\\n")
    and split every later message."""
    done = cli(node, "hook", "preinst", "upgrade", "1.0", "1.1\n")
    assert done.returncode == 2
    assert done.stderr == "ivle-maint: error: preinst upgrade: not a valid version: '1.1\\n'\n"
    assert node.service_running("apache2") and journal(node) == {}
    assert not list(node.state_dir.glob("journal/*"))


# -- malformed settings and ivle.conf ----------------------------------------------

MALFORMED_SETTINGS = [
    b"[node\nrole = both\n",
    b"[path]\nstate = /tmp/elsewhere\n",
    b"[jails]\nlazy_unmuont = true\n",
    b"[database]\nbackup_keep = many\n",
]


def preinst_refuses_malformed(site: Any, path: Path, text: bytes) -> bytes:
    """TEXT appended to PATH: the preinst exits 2 with one line naming PATH,
    which stays byte for byte as it was given; returns what it holds."""
    bad = path.read_bytes() + b"\n" + text
    path.write_bytes(bad)
    done = preinst(site)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert line.startswith(f"ivle-maint: error: {path}")
    assert path.read_bytes() == bad
    assert_untouched(site)
    return bad


@pytest.mark.parametrize("text", MALFORMED_SETTINGS)
def test_malformed_settings_exit_2_and_stay_byte_for_byte(site: Any, text: bytes) -> None:
    preinst_refuses_malformed(site, site.maint_conf, text)


MALFORMED_IVLE_CONF = [
    b"[media\nversion = 1.0\n",
    b"[database]\nport = fifty\n",
    b"[usrmgt]\nmagic = \xff\xfe not UTF-8\n",
]


@pytest.mark.parametrize("text", MALFORMED_IVLE_CONF)
def test_malformed_ivle_conf_exits_2_and_stays_byte_for_byte(site: Any, text: bytes) -> None:
    bad = preinst_refuses_malformed(site, site.ivle_conf, text)
    media = cli(site, "media", "set", "1.1")
    assert media.returncode in (1, 2) and len(error_lines(media)) == 1
    assert site.ivle_conf.read_bytes() == bad
