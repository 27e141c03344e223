"""Source installs: `ivle-maint upgrade --source DIR` around ./setup.py.

The IVLE tree here is a stand-in whose setup.py behaves as IVLE's does for
IVLE's upgrade procedure (`./setup.py build`, `./setup.py install`), installing the new
code into the sandbox node.
"""

from __future__ import annotations

import pytest

from ivle_sandbox.releases import NEW, OLD, RELEASES
from support.source_tree import source_tree
from support.upgrade_helpers import at_version_1_0, cli, final_state, home_checksums, journal

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

def test_source_upgrade_runs_both_phases_around_setup_py(node_factory):
    node = at_version_1_0(node_factory(users=4, consoles=2))
    homes = home_checksums(node)
    tree = source_tree(node, RELEASES["1.1"])
    done = cli(node, "upgrade", "--from", "1.0", "--source", str(tree))
    assert done.returncode == 0, done.stderr
    assert "./setup.py build in" in done.stderr and "./setup.py install in" in done.stderr
    state = final_state(node)
    assert state["installed"] == "1.1" and state["template"] == "1.1"
    assert state["marker"] == sorted(k.removesuffix(".sql") for k in {**OLD, **NEW})
    assert state["services"] == {"apache2": True, "ivle-usrmgt-server": True}
    assert state["mounts"] == 0 and state["media"] == "1.1"
    assert journal(node)["migrations"] == str(tree / "userdb" / "migrations")
    assert home_checksums(node) == homes


def test_broken_new_migration_fails_preflight_with_the_site_up(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    broken = {**RELEASES["1.1"], "20100215.sql": "CREATE TABLE t (x text DEFAULT 'open);\n"}
    tree = source_tree(node, broken)
    done = cli(node, "upgrade", "--from", "1.0", "--source", str(tree))
    assert done.returncode == 1
    assert "20100215" in done.stderr and "unterminated" in done.stderr.lower()
    assert node.service_running("apache2") and len(node.console_pids()) == 1
    assert node.installed_version() == "1.0"
    assert not (tree / "build").exists()


def test_failed_install_resumes_with_the_same_command(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    tree = source_tree(node, RELEASES["1.1"])
    (tree / "FAIL_INSTALL").write_text("")
    command = ["upgrade", "--from", "1.0", "--source", str(tree)]
    failed = cli(node, *command)
    assert failed.returncode == 1
    assert "./setup.py install failed with status 1: error: could not copy files" in failed.stderr
    assert f"resume with: ivle-maint upgrade --from 1.0 --to 1.1 --source {tree}" in failed.stderr
    assert not node.service_running("apache2")  # the site is down: resume told
    (tree / "FAIL_INSTALL").unlink()
    done = cli(node, *command)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["services"] == {"apache2": True, "ivle-usrmgt-server": True}
    assert [e for _, _, e in node.service_events("apache2")].count("stop") == 1
