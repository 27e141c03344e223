"""Threads a test started, seen to end."""

from __future__ import annotations

import threading
import time


def threads_back_to(count: int, within: float = 5.0) -> list[str]:
    """The threads' names while more than COUNT are alive after WITHIN
    seconds ([] once back): a joined thread leaves the count a moment after
    its work ends; one that never ends is named."""
    deadline = time.monotonic() + within
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [t.name for t in threading.enumerate()] if threading.active_count() > count else []
