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


def check_upgrade(old: str, new: str) -> None:
    """Refuse a downgrade: IVLE's migrations only go forwards."""
    if parse(new) < parse(old):
        raise MaintError(f"{new} is older than {old}: downgrades are not supported")
