"""dpkg's unwind after the preinst dies (SIGKILL at a generated step):
NEW-postrm abort-upgrade OLD, then OLD-postinst abort-upgrade NEW, exactly
as dpkg calls them; then the upgrade again (apt-get upgrade) completes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.abuse_helpers import kill_when
from support.upgrade_helpers import (
    ALL_KEYS,
    at_version_1_0,
    cli,
    final_state,
    journal,
    postinst,
    preinst,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

BEFORE_STEPS = ["stop-web", "stop-consoles", "unmount-jails", "baseline"]


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(step=st.sampled_from(BEFORE_STEPS), with_new=st.booleans())
def test_dpkgs_unwind_of_a_killed_preinst_gives_the_site_back(node_factory: Any, step: str,
                                                              with_new: bool) -> None:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
    kill_when(proc, lambda: journal(node).get("steps", {}).get(step, {}).get("status")
              in ("running", "done"), timeout=60, poll=0.002)
    postrm = cli(node, "hook", "postrm", "abort-upgrade", "1.0", *(["1.1"] if with_new else []))
    assert postrm.returncode == 0, postrm.stderr
    back = cli(node, "hook", "--package-version", "1.0", "postinst", "abort-upgrade", "1.1")
    assert back.returncode == 0, back.stderr
    assert node.service_running("apache2") and node.service_running("ivle-usrmgt-server")
    assert cli(node, "hold", "check").returncode == 0
    assert preinst(node).returncode == 0
    unpack(node)
    done = postinst(node)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS and node.service_running("apache2")
