"""`ivle-maint db status` and `plan` load only what they use.

A fresh interpreter loads what the command line loads for each command
(cli.py, every command module to build the parser, then the modules the
command function imports) and lists sys.modules: none of the modules
below may be among them.  Not a timing: a module is there or not.
tests/integration/test_import_budget.py runs the commands themselves on
a node, the database read included.

And each probe is shown the module that would break its rule, so a probe
that can no longer see it fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What reading the marker never needs: splitting, classifying (pglast),
# applying, pg_dump's backups, running commands (sh), the steps.
NOT_FOR_STATUS = (
    "sh", "pglast", "debian", "psutil", "psycopg2.extras", "http.client",
    "ivle_maint.system", "ivle_maint.children", "ivle_maint.logfile",
    "ivle_maint.db.backup", "ivle_maint.db.pins", "ivle_maint.db.apply",
    "ivle_maint.db.classify", "ivle_maint.db.sqlsplit", "ivle_maint.db.migration_class",
    "ivle_maint.db.plan", "ivle_maint.db.migrations", "ivle_maint.db.preflight",
    "ivle_maint.procedure", "ivle_maint.runner", "ivle_maint.steps", "ivle_maint.cluster",
)
# `plan` loads the steps (each says its own plan lines), so their
# libraries; not the third-party modules they load only to act (an
# upgrade loads them before its first step: upgrade.preload).
NOT_FOR_PLAN = ("sh", "pglast", "psycopg2.extras")

# The command line up to the command function: cli.py builds the whole
# parser (every command module), then the function imports its modules.
CLI = "import ivle_maint.cli as cli\ncli.build_parser()\n"


def loaded(code: str) -> set[str]:
    """The modules a fresh python3 has loaded after running CODE."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO),
                                                      "PATH": "/usr/bin:/bin"})
    return set(json.loads(done.stdout.splitlines()[-1]))


def found(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    """The FORBIDDEN modules (or submodules of them) among MODULES."""
    return sorted(m for m in modules for f in forbidden if m == f or m.startswith(f + "."))


# What commands/db.py's show_status and commands/upgrade.py's cmd_plan import.
STATUS = CLI + "from ivle_maint.db.status import status\n"
PLAN = CLI + "from ivle_maint.plan import describe\n"


def test_db_status_loads_no_migration_machinery():
    modules = loaded(STATUS)
    assert "ivle_maint.db.status" in modules and "psycopg2" in modules
    assert found(modules, NOT_FOR_STATUS) == []


def test_plan_loads_neither_sh_nor_pglast():
    modules = loaded(PLAN)
    assert "ivle_maint.procedure" in modules
    assert found(modules, NOT_FOR_PLAN) == []


def test_the_probes_see_a_forbidden_module():
    modules = loaded(STATUS + "import ivle_maint.db.migrations\nimport sh\n")
    assert {"ivle_maint.db.backup", "ivle_maint.db.apply", "ivle_maint.db.sqlsplit", "sh"} \
        <= set(found(modules, NOT_FOR_STATUS))
    preloaded = loaded(PLAN + "import ivle_maint.upgrade\nivle_maint.upgrade.preload()\n")
    assert "sh" in found(preloaded, NOT_FOR_PLAN)
