"""dpkg's calls of IVLE's maintainer scripts: each calling form, checked.

Every calling form of Debian Policy chapter 6 is listed here with what it
stands for: a phase of the upgrade, the undoing of one, or nothing.  This
module loads nothing else, so that a call that stands for nothing (the old
postrm's `upgrade`, which dpkg runs while the web server is down) costs
ivle-maint's start-up alone; hooks.py runs the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .errors import UsageError


class Form(StrEnum):
    """What one of dpkg's calls stands for."""

    BEFORE = "before"  # NEW-preinst upgrade OLD NEW
    AFTER = "after"  # postinst configure OLD
    ABORT_FROM_OLD = "abort-from-old"  # OLD-postinst abort-upgrade NEW
    ABORT_FROM_NEW = "abort-from-new"  # NEW-postrm abort-upgrade OLD
    NOTHING = "nothing"


FORMS: dict[tuple[str, str], Form] = {
    ("preinst", "install"): Form.NOTHING,
    ("preinst", "upgrade"): Form.BEFORE,
    # dpkg's unwind of a failed OLD-postrm calls it with NEW's files still on
    # disk: the web server started now would load NEW's code on OLD's
    # schema.  NEW-postrm abort-upgrade OLD follows, once OLD's files are back.
    ("preinst", "abort-upgrade"): Form.NOTHING,
    ("postinst", "configure"): Form.AFTER,
    ("postinst", "reconfigure"): Form.AFTER,
    ("postinst", "abort-upgrade"): Form.ABORT_FROM_OLD,
    ("postinst", "abort-remove"): Form.NOTHING,
    ("postinst", "abort-deconfigure"): Form.NOTHING,
    ("postinst", "triggered"): Form.NOTHING,
    ("prerm", "remove"): Form.NOTHING,
    ("prerm", "upgrade"): Form.NOTHING,
    ("prerm", "deconfigure"): Form.NOTHING,
    ("prerm", "failed-upgrade"): Form.NOTHING,
    ("postrm", "remove"): Form.NOTHING,
    ("postrm", "purge"): Form.NOTHING,
    ("postrm", "upgrade"): Form.NOTHING,
    ("postrm", "disappear"): Form.NOTHING,
    ("postrm", "failed-upgrade"): Form.NOTHING,
    ("postrm", "abort-install"): Form.NOTHING,
    ("postrm", "abort-upgrade"): Form.ABORT_FROM_NEW,
}

# How many arguments follow the action, per Debian Policy 6.5 and 6.6 and
# dpkg's deb-prerm(5), deb-postinst(5): at most three unless listed.
ARG_COUNTS: dict[tuple[str, str], range] = {
    # in-favour NEW VERSION [removing CONFLICTING VERSION]: dpkg (apt's
    # --auto-deconfigure) deconfigures IVLE to remove a package it depends on.
    ("prerm", "deconfigure"): range(0, 7),
    ("postinst", "abort-deconfigure"): range(0, 7),
    ("preinst", "install"): range(0, 3),  # dpkg >= 1.18.5 adds NEW
    ("preinst", "upgrade"): range(2, 3),
    ("preinst", "abort-upgrade"): range(1, 2),
    ("postinst", "configure"): range(0, 2),
    ("postinst", "reconfigure"): range(0, 2),
    ("postinst", "abort-upgrade"): range(1, 2),
    ("postrm", "abort-upgrade"): range(1, 3),  # OLD, and NEW since dpkg 1.18.5
}

# Debian Policy 5.6.1: what names a package.  The name goes to dpkg-query's
# argv, the journal and a printed `apt-get install PACKAGE=NEW`.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")

# The arguments of each form that acts which are versions (the journal, the
# log and printed commands are named after them), per Debian Policy 6.5:
# True where dpkg gives an empty one (postinst configure of a first install,
# which never configured a version).  hooks.checked_call checks each.
VERSION_SLOTS: dict[tuple[str, str], tuple[bool, ...]] = {
    ("preinst", "upgrade"): (False, False),
    ("postinst", "configure"): (True,),
    ("postinst", "reconfigure"): (True,),
    ("postinst", "abort-upgrade"): (False,),
    ("postrm", "abort-upgrade"): (False, False),
}


@dataclass(frozen=True)
class HookCall:
    script: str
    action: str
    args: tuple[str, ...]
    package_version: str  # the version of the package whose script this is
    package: str = "ivle"  # dpkg's name for it: a rerun asks dpkg about it

    @property
    def form(self) -> Form:
        return FORMS[(self.script, self.action)]

    def nothing_line(self) -> str:
        return f"{self.script} {self.action}: nothing to do"


def parse_call(
    script: str, argv: Sequence[str], package: str, version: str | None
) -> HookCall:
    """Check the form of dpkg's call (an unknown form is an error, as in dh's
    scripts); hooks.checked_call checks its versions before it runs."""
    if not argv:
        raise UsageError(f"{script}: no action given")
    action, args = argv[0], tuple(argv[1:])
    if (script, action) not in FORMS:
        raise UsageError(f"{script} called with unknown argument '{action}'")
    allowed = ARG_COUNTS.get((script, action), range(0, 4))
    if len(args) not in allowed:
        raise UsageError(f"{script} {action}: unexpected arguments {' '.join(args) or '(none)'}")
    how = "DPKG_MAINTSCRIPT_PACKAGE" if "DPKG_MAINTSCRIPT_PACKAGE" in os.environ else "--package"
    package = os.environ.get("DPKG_MAINTSCRIPT_PACKAGE", package)
    if not PACKAGE_NAME.fullmatch(package):
        raise UsageError(f"{script} {action}: {how} is no package name: {package[:40]!r}")
    return HookCall(script, action, args, version or "", package)
