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
from ..output import Reporter, TerminalReporter


@dataclass
class Context:
    """What a command function needs: its arguments, settings, a reporter."""

    args: argparse.Namespace
    reporter: Reporter = field(default_factory=TerminalReporter)

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.args.config)
