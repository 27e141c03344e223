"""One module per command group; cli.py discovers them here.

Each module defines ``register(subparsers)`` and sets ``func`` on its
parsers to a function ``(ctx: Context) -> int``.  These modules (and
cli.py) import the library inside those functions on purpose, so that
parsing the arguments (``--help``, a usage error) loads neither ivle_maint's
procedure nor psycopg2 or psutil; everywhere else imports sit at the top
(tests/unit/test_import_graph.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import cached_property

from ..config import Settings, load_settings
from ..errors import MaintError, UsageError
from ..output import Reporter, TerminalReporter
from ..safepaths import check_settings_dirs

# The module each command's parser is registered by, where it is not the
# command's own name (commands/db.py: 'db').  cli.py builds the parser of
# the chosen command's module alone (tests/unit/commands/test_registry.py).
REGISTERED_BY = {"plan": "upgrade", "upgrade": "upgrade", "rerun": "upgrade",
                 "hook": "upgrade", "status": "upgrade", "commit": "rollback"}


@dataclass
class Context:
    """What a command function needs: its arguments, settings, a reporter."""

    args: argparse.Namespace
    reporter: Reporter = field(default_factory=TerminalReporter)

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.args.config)

    def refuse_unsafe(self, *dirs: str) -> None:
        """Before a command acts, as before an upgrade: settings, ivle.conf and
        the [paths] DIRS it writes must be safe from other users (exit 2)."""
        check_settings_dirs(self.settings, dirs)


def checked_version(text: str | None, what: str) -> str | None:
    """A version from the command line, dpkg's syntax (exit 2 otherwise):
    journals, logs and printed commands are named after it, and a space or
    a newline in it would split them."""
    if text is not None:
        from ..versions import check  # dpkg's syntax, no python-debian: none loads yet

        try:
            check(text)
        except MaintError as exc:
            raise UsageError(f"{what}: {exc}") from None
    return text
