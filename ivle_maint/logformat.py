"""How ivle-maint's log records read, on stderr (-v) and in the run's log
file (logfile.py): every line through gates.text.

Apart from logfile.py, which writes, rotates and locks files: every command
sets up its stderr handler with these, and `ivle-maint db status` needs no
more of logging than that.
"""

from __future__ import annotations

import logging
from typing import Any

from .gates.text import INDENT, block, bounded

# A record's attribute: its text has been said on stderr already (cli.py
# leaves it out of the stderr handler).
SAID = "ivle_maint_said"


class SafeFormatter(logging.Formatter):
    """Each record on lines of its own: the message through gates.text, a
    traceback's lines indented, nothing raw from outside."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return block(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join(INDENT + bounded(line) for line in text.split("\n"))
