"""Fault injection: the upgrade's postinst SIGKILLed inside each step of the
after-phase (held there: support/held_steps.py), then `ivle-maint rollback`'s
way through dpkg: the kept 1.0 installed over the half-configured 1.1 (1.0's
preinst `upgrade 1.1`, its postinst `configure 1.0`: the last version dpkg
configured).  The node ends as it was at 1.0, serving."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from support.abuse_helpers import kill_when
from support.held_steps import AFTER_STEPS, held_in
from support.upgrade_helpers import (
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    journal,
    preinst,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

POSTINST = ("hook", "--package-version", "1.1", "postinst", "configure", "1.0")


def killed_in(node: Any, step: str, pythonpath: tuple[str, ...]) -> None:
    """The postinst, SIGKILLed 0.2 s into STEP (nothing of ivle-maint runs after)."""
    launched = time.time()
    proc = start_cli(node, *POSTINST, pythonpath=pythonpath)
    kill_when(proc, lambda: journal(node).get("steps", {}).get(step, {}).get("started", 0)
              >= launched, timeout=120, poll=0.005, delay=0.2)
    assert proc.returncode == -signal.SIGKILL
    assert journal(node)["steps"][step]["status"] == "running"  # as the kill left it


@pytest.mark.parametrize("step", AFTER_STEPS)
def test_a_postinst_killed_in_any_step_rolls_back_to_the_point(
        node_factory: Any, tmp_path: Path, step: str) -> None:
    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    start, homes = final_state(node), home_checksums(node)
    assert preinst(node).returncode == 0
    with held_in(node, step, tmp_path) as pythonpath:
        killed_in(node, step, pythonpath)
    # dpkg installing the kept 1.0 over the half-configured 1.1.
    before = cli(node, "hook", "preinst", "upgrade", "1.1", "1.0")
    assert before.returncode == 0, before.stderr
    unpack(node, "1.0")
    after = cli(node, "hook", "--package-version", "1.0", "postinst", "configure", "1.0")
    assert after.returncode == 0, after.stderr
    assert "rollback: code only" in after.stderr  # 1.1's migrations are additive
    end = final_state(node)
    assert (end["installed"], end["template"], end["services"]) == \
        ("1.0", "1.0", start["services"])
    assert home_checksums(node) == homes
    assert journal(node, "1.1", "1.0")["state"] == "complete"
    assert cli(node, "rerun").returncode == 0  # nothing left unfinished
