"""The restore point through 20 failed retries of an upgrade (`backup_keep =
1`, each retry a dump) and a clock that jumped: the rollback still finds
the database as it was when the site stopped taking writes, and puts it
back."""

from __future__ import annotations

from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.upgrade_helpers import (
    at_version_1_0,
    cli,
    final_state,
    logins,
    marker_keys,
    postinst,
    preinst,
    set_setting,
    unpack,
    write_row,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

# The first migration changes rows (destructive: the way back is full), the
# last one fails: each retry applies nothing more, and dumps again.
FAILING = {**OLD, **NEW, "20100201-00.sql": "UPDATE login SET nick = upper(nick);\n",
           "20100215.sql": "SELECT 1 / 0;\n"}
ACCEPT = {"IVLE_MAINT_ACCEPT_DATA_LOSS": "1"}


def hook(node: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    """ivle-maint hook ARGS, as IVLE's maintainer script calls it under dpkg."""
    return cli(node, "hook", *args, extra_env=env)


def test_the_point_survives_twenty_retries_and_the_rollback_restores_its_dump(
        node_factory: Any) -> None:
    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    set_setting(node, "database", "backup_keep", "1")
    assert preinst(node).returncode == 0
    unpack(node, migrations=FAILING)
    for _ in range(20):  # dpkg --configure -a, again and again
        assert postinst(node).returncode == 1
    write_row(node, "written_meanwhile")  # by hand: the site is down
    status = cli(node, "status").stdout
    assert "restore point of 1.0 -> 1.1 (pinned" in status and "database dump" in status
    # The kept 1.0 over the half-configured 1.1 (dpkg's calls).
    assert hook(node, "preinst", "upgrade", "1.1", "1.0").returncode == 1  # not accepted
    before = hook(node, "preinst", "upgrade", "1.1", "1.0", env=ACCEPT)
    assert before.returncode == 0, before.stderr
    unpack(node, "1.0")
    after = hook(node, "--package-version", "1.0", "postinst", "configure", "1.0", env=ACCEPT)
    assert after.returncode == 0, after.stderr
    assert "written_meanwhile" not in logins(node)
    assert marker_keys(node) == ["20090105", "20090212-01"]  # the dump's: baseline only
    end = final_state(node)
    assert (end["installed"], end["template"]) == ("1.0", "1.0")
    assert all(end["services"].values())
