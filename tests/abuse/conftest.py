"""The fault-and-abuse suite: what a hostile administrator, a fault or a
SIGKILL does to a node, and what ivle-maint answers (issue: safety).

Every case asserts a one-line message, the documented exit status, that
nothing is lost (database, ivle.conf, users' files), and that the next
command (usually `ivle-maint rerun`) ends where an uninterrupted run ends.
The integration helpers (sandbox nodes, support.upgrade_helpers) are
shared; the abuse cases' own are in support/abuse_helpers.py.

Fixtures:
    site  function: a single-machine IVLE (role both) at 1.0, serving
"""

from __future__ import annotations

from typing import Any

import pytest

from support.upgrade_helpers import at_version_1_0


@pytest.fixture
def site(node_factory: Any) -> Any:
    """A single-machine IVLE at 1.0, serving."""
    return at_version_1_0(node_factory(users=3, consoles=1, role="both"))
