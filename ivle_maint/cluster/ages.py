"""How long ago a node was last seen, for a person: "just now", "3 min ago".

The age comes from the database server's clock (now() - last_seen); a row
written a moment after the query began, or by a transaction that started
later, can come out slightly negative: that is "just now", never "-0s".
"""

from __future__ import annotations


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never seen"
    seconds = max(0.0, seconds)
    if seconds < 5:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
