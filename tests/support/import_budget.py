"""What `ivle-maint db status` and `plan` must never load
(tests/unit/test_import_budget.py: the modules the command line loads for
them; tests/integration/test_import_budget.py: the commands run on a node)."""

from __future__ import annotations

from collections.abc import Iterable

# What reading the marker never needs: splitting, classifying (pglast),
# applying, pg_dump's backups, running commands (sh), the steps, nor
# their types (context: the settings take the roles from roles.py); nor
# strptime's module (db.discovery checks a key's date without it), nor
# difflib (only a misspelt setting's "did you mean"), nor shutil (argparse
# asks it for the help's width on every add_argument: cli.help_width), nor
# Python's ssl (psycopg2 would load it for nothing: pgdriver.py).
NOT_FOR_STATUS = (
    "sh", "pglast", "debian", "psutil", "psycopg2.extras", "http.client", "_strptime", "ssl",
    "difflib", "shutil", "ivle_maint.context",
    "ivle_maint.system", "ivle_maint.children", "ivle_maint.logfile",
    "ivle_maint.db.backup", "ivle_maint.db.pins", "ivle_maint.db.apply",
    "ivle_maint.db.classify", "ivle_maint.db.sqlsplit", "ivle_maint.db.migration_class",
    "ivle_maint.db.plan", "ivle_maint.db.migrations", "ivle_maint.db.preflight",
    "ivle_maint.procedure", "ivle_maint.runner", "ivle_maint.steps", "ivle_maint.cluster",
    "ivle_maint.commands.upgrade", "ivle_maint.commands.cluster",
)
# `plan` loads the steps (each says its own plan lines), so their
# libraries; not the third-party modules they load only to act (an
# upgrade loads them before its first step: upgrade.preload): sh,
# python3-debian's DebFile (and chardet with it) to read a .deb,
# http.client to ask a web server, psutil to look at processes; nor
# uuid, nor ssl (pgdriver.py).  pglast: the modules that use it load it
# only to classify pending migrations.
NOT_FOR_PLAN = ("sh", "pglast", "psycopg2.extras", "debian.debfile", "chardet", "http.client",
                "psutil", "uuid", "ssl")


def found(modules: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """The FORBIDDEN modules (or submodules of them) among MODULES."""
    forbidden = tuple(forbidden)
    return sorted(m for m in modules for f in forbidden if m == f or m.startswith(f + "."))
