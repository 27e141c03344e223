"""`ivle-maint db status` and `plan`, run on a node, load only what they use.

A sitecustomize.py put first on ivle-maint's PYTHONPATH writes the names
in sys.modules when the process exits: whatever the commands import while
they run (the database read, the cluster table) is there too.  What they
must not load: support/import_budget.py (its probes are shown a forbidden
module in tests/unit/test_import_budget.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.import_budget import NOT_FOR_PLAN, NOT_FOR_STATUS, found
from support.upgrade_helpers import at_version_1_0, cli

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

WATCHER = '''\
import atexit
import json
import os
import sys

REPORT = os.environ["IVLE_TEST_LOADED"]  # now: ivle-maint pins its environment


@atexit.register
def _loaded():
    with open(REPORT, "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)
'''


def loaded(node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> set[str]:
    watcher = tmp_path / "watcher"
    watcher.mkdir(exist_ok=True)
    (watcher / "sitecustomize.py").write_text(WATCHER)
    report = tmp_path / "loaded.json"
    report.unlink(missing_ok=True)
    monkeypatch.setenv("IVLE_TEST_LOADED", str(report))
    cli(node, *args, check=True, pythonpath=(str(watcher),))
    return set(json.loads(report.read_text(encoding="utf-8")))


def test_db_status_and_plan_load_only_what_they_use(node_factory, tmp_path, monkeypatch):
    node = at_version_1_0(node_factory(users=1, role="master"))
    cli(node, "db", "baseline", "20090212-01", check=True)  # nothing pending: no classifying

    status = loaded(node, tmp_path, monkeypatch, "db", "status")
    assert "ivle_maint.db.status" in status and "psycopg2" in status
    assert found(status, NOT_FOR_STATUS) == []

    plan = loaded(node, tmp_path, monkeypatch, "plan", "--from", "1.0", "--to", "1.1")
    assert "ivle_maint.procedure" in plan
    assert found(plan, NOT_FOR_PLAN) == []
