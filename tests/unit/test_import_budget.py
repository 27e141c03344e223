"""`ivle-maint db status` and `plan` load only what they use.

A fresh interpreter loads what the command line loads for each command
(cli.py, the command's module to build its parser, then the modules the
command function imports) and lists sys.modules: none of the modules
support/import_budget.py names may be among them.  Not a timing: a module is there or not.
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

from hypothesis import given, settings
from hypothesis import strategies as st

from support.import_budget import NOT_FOR_PLAN, NOT_FOR_STATUS, found

REPO = Path(__file__).resolve().parents[2]


# The command line up to the command function: cli.py builds the parser of
# the command's module, then the function imports its modules.
def cli(*argv: str) -> str:
    return f"import ivle_maint.cli as cli\ncli.build_parser(cli.command_module({list(argv)!r}))\n"


def loaded(code: str) -> set[str]:
    """The modules a fresh python3 has loaded after running CODE."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO),
                                                      "PATH": "/usr/bin:/bin"})
    return set(json.loads(done.stdout.splitlines()[-1]))


# What commands/db.py's show_status and commands/upgrade.py's cmd_plan import.
STATUS = cli("db", "status") + "from ivle_maint.db.status import status\n"
PLAN = cli("plan", "--to", "1.1") + "from ivle_maint.plan import describe\n"


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
    every_command = loaded("import ivle_maint.cli as cli\ncli.build_parser()\n")
    assert found(every_command, NOT_FOR_STATUS) == ["ivle_maint.commands.cluster",
                                                    "ivle_maint.commands.upgrade",
                                                    "ivle_maint.context", "shutil"]
    preloaded = loaded(PLAN + "import ivle_maint.upgrade\nivle_maint.upgrade.preload()\n")
    assert {"sh", "debian.debfile", "http.client", "psutil"} <= set(found(preloaded, NOT_FOR_PLAN))


@settings(max_examples=60, deadline=None)
@given(columns=st.one_of(st.none(), st.integers(-5, 400).map(str),
                         st.sampled_from(["", "wide", "80x", " 90"])))
def test_the_help_is_as_wide_as_argparse_makes_it(columns):
    """cli.help_width() (no shutil) is the width argparse's own formatter
    takes from shutil.get_terminal_size(), whatever COLUMNS says."""
    import argparse
    import os
    import shutil

    from ivle_maint.cli import help_width

    saved = os.environ.get("COLUMNS")
    try:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
        assert help_width() == argparse.HelpFormatter("x")._width == \
            shutil.get_terminal_size().columns - 2
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
