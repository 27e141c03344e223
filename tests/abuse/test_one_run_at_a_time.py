"""One ivle-maint at a time on a node: a second run beside a running one
exits 75 in one line naming what holds the node lock, and the first ends
as an uninterrupted run does.  (The migration lock of a killed runner:
test_nothing_runs_beside_the_rerun.py; a live holder in another PID
namespace or on another machine: test_cluster_safety.py; a symlink in
place of the lock file: test_files_read_and_run.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import upgraded_state
from support.upgrade_helpers import (
    at_version_1_0,
    final_state,
    postinst,
    preinst,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def reference(node_factory: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves."""
    return upgraded_state(at_version_1_0(node_factory(users=3, consoles=1)))


def test_two_reruns_at_once_one_finishes_the_other_exits_75(node_factory: Any,
                                                             reference: dict[str, Any]) -> None:
    node = at_version_1_0(node_factory(users=3, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node, migrations={**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"})
    assert postinst(node).returncode == 1
    unpack(node)  # the corrected package
    node.set_fakes("ivle-buildjail", delay=3)  # the first holds the node lock a while
    first, second = start_cli(node, "rerun"), start_cli(node, "rerun")
    errs = [p.communicate(timeout=300)[1] for p in (first, second)]
    outcomes = sorted(zip((first.returncode, second.returncode), errs, strict=True))
    (ok, ok_err), (busy, busy_err) = outcomes
    assert (ok, busy) == (0, 75), (ok_err, busy_err)
    assert busy_err.startswith("ivle-maint: error: another ivle-maint holds ")
    assert "upgrade 1.0 -> 1.1" in busy_err and len(busy_err.splitlines()) == 1
    assert final_state(node) == reference
