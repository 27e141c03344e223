"""The fault-and-abuse suite: what a hostile administrator, a fault or a
SIGKILL does to a node, and what ivle-maint answers (issue: safety).

Every case asserts a one-line message, the documented exit status, that
nothing is lost (database, ivle.conf, users' files), and that the next
command (usually `ivle-maint rerun`) ends where an uninterrupted run ends.
The integration helpers (sandbox nodes, upgrade_helpers) are shared.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
