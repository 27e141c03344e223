"""Package versions compared as dpkg compares them (python-debian)."""

from __future__ import annotations

from debian.debian_support import Version

from .errors import MaintError


def parse(text: str) -> Version:
    """A Debian version, or a one-line MaintError naming the bad text."""
    try:
        if not text.isprintable():  # python-debian takes "1.1\n" (its $ matches before \n)
            raise ValueError(text)
        return Version(text)
    except ValueError:
        raise MaintError(f"not a valid version: {text!r}") from None


def is_downgrade(old: str, new: str) -> bool:
    return bool(parse(new) < parse(old))


def check_upgrade(old: str, new: str, *, rollback: bool = False) -> None:
    """Refuse a downgrade, unless it goes back to a restore point: IVLE's
    migrations only go forwards, a rollback puts the point's state back."""
    if is_downgrade(old, new) and not rollback:
        raise MaintError(f"{new} is older than {old}: a downgrade is a rollback, and this "
                         f"node keeps no pinned restore point of the upgrade {new} -> {old} "
                         "(see: ivle-maint status)")
