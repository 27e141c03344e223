"""Package versions compared as dpkg compares them (python-debian)."""

from __future__ import annotations

from debian.debian_support import Version

from .errors import MaintError

# Journals and logs are named OLD_to_NEW (and a stamp): a file name holds
# 255 bytes, so two versions of this length and the rest always fit.
MAX_LENGTH = 100


def parse(text: str) -> Version:
    """A Debian version as dpkg's own parser takes it, or a one-line
    MaintError naming the bad text: the one check of every version from
    outside (dpkg's arguments, dpkg-query, a command line)."""
    if len(text) > MAX_LENGTH:
        raise MaintError(f"not a valid version: {text[:40]!r}... ({len(text)} characters, "
                         f"at most {MAX_LENGTH})")
    try:
        # python-debian takes "1.1\n" (its $ matches before \n), and no digit first
        if not text.isprintable() or not _dpkg_shaped(text):
            raise ValueError(text)
        return Version(text)
    except ValueError:
        raise MaintError(f"not a valid version: {text!r}") from None


def _dpkg_shaped(text: str) -> bool:
    """What dpkg's parser takes without a word (dpkg --validate-version),
    beyond python-debian's looser syntax ("none", "-1", "1.0-" and "1::2"
    are versions to it): after the epoch (up to the first colon) a digit
    first, and no empty revision."""
    epoch, colon, rest = text.partition(":")
    if not colon:
        epoch, rest = "", text
    return (not colon or epoch.isdigit()) and rest[:1].isdigit() and not text.endswith("-")


def is_downgrade(old: str, new: str) -> bool:
    return bool(parse(new) < parse(old))


def check_upgrade(old: str, new: str, *, rollback: bool = False) -> None:
    """Refuse a downgrade, unless it goes back to a restore point: IVLE's
    migrations only go forwards, a rollback puts the point's state back."""
    if is_downgrade(old, new) and not rollback:
        raise MaintError(f"{new} is older than {old}: a downgrade is a rollback, and this "
                         f"node keeps no pinned restore point of the upgrade {new} -> {old} "
                         "(see: ivle-maint status)")
