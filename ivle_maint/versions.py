"""Package versions compared as dpkg compares them (python-debian).

check() is dpkg's syntax alone, without python-debian (whose import costs
tens of milliseconds): the journal's gate uses it, and the schema hold's
check, which systemd runs before every start of the web server, loads the
journal."""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from .errors import MaintError
from .gates.text import ivle_maint

if TYPE_CHECKING:
    from debian.debian_support import Version

# Journals and logs are named OLD_to_NEW (and a stamp): a file name holds
# 255 bytes, so two versions of this length and the rest always fit.
MAX_LENGTH = 100
_EPOCH_MAX = 2**31 - 1  # dpkg: "epoch in version is too big"
_UPSTREAM = frozenset(string.ascii_letters + string.digits + ".+~-:")
_REVISION = frozenset(string.ascii_letters + string.digits + ".+~")


def check(text: str, *, names: bool = True) -> None:
    """TEXT is a version as dpkg's own parser takes it without a word
    (dpkg --validate-version), or a one-line MaintError naming it.
    python-debian is looser: "none", "-1", "1.0-", "1::2" and "1.1\\n" are
    versions to it, and would name journals, logs and printed commands.
    NAMES=False: a version that names nothing (dpkg's abort calls only
    select journals by it), of any length dpkg takes."""
    if names and len(text) > MAX_LENGTH:
        raise MaintError(f"not a valid version: {text[:40]!r}... ({len(text)} characters, "
                         f"at most {MAX_LENGTH})")
    if not _dpkg_shaped(text):
        raise MaintError(f"not a valid version: {text!r}")


def _dpkg_shaped(text: str) -> bool:
    """dpkg's split: the epoch up to the first colon, the revision after the
    last hyphen; a digit first, and no empty part."""
    epoch, colon, rest = text.partition(":")
    if not colon:
        epoch, rest = "", text
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    if colon and not (epoch.isascii() and epoch.isdigit() and int(epoch) <= _EPOCH_MAX):
        return False
    return (upstream[:1].isascii() and upstream[:1].isdigit() and set(upstream) <= _UPSTREAM
            and (not hyphen or (bool(revision) and set(revision) <= _REVISION)))


def parse(text: str) -> Version:
    """A Debian version checked as dpkg's parser takes it (check()), or a
    one-line MaintError naming the bad text: the one check of every version
    from outside (dpkg's arguments, dpkg-query, a command line)."""
    from debian.debian_support import Version

    check(text)
    try:
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
                         f"(see: {ivle_maint('status')})")
