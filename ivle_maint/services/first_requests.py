"""Will Apache's first requests after start-web get a 500 from mod_python?

mod_python imports a site's PythonHandler module on each child's first
request.  Under a threaded MPM (mpm_event, Debian's default) two first
requests at once race inside that child: the second may find the module
half-imported, or get an interpreter of its own whose psycopg2 import
fails, and then in every later request of that child.  start-web starts
Apache just as students' retries and the cluster's checks arrive, so the
plan and the preflight warn when one of IVLE's enabled sites hands
requests to mod_python while no PythonImport loads it as each child
starts, under any MPM but prefork (doc/operations.md, "The first requests
after Apache starts").  A warning only: the site works, and most first
requests do not collide.  A file the gate refuses is not looked at: the
warning is then not given, never the upgrade refused for it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..errors import MaintError
from ..gates import trusted
from ..gates.schema_hold import apache_dir, site_entries

PREFORK = "mpm_prefork.load"
MOD_PYTHON = "python.load"


def directives(text: str) -> set[str]:
    """The directive names in an Apache configuration text, in lower case
    (Apache's names are case-insensitive); comments are not directives."""
    names = set()
    for line in text.splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            names.add(words[0].lower())
    return names


def _names(path: Path) -> set[str]:
    try:
        return directives(trusted.read(path, trusted.APACHE_CONF).decode("utf-8", "replace"))
    except (OSError, MaintError):
        return set()


def at_risk(settings: Settings) -> list[str]:
    """IVLE's enabled sites whose first requests may race in mod_python."""
    root = apache_dir(settings)
    mods = root / "mods-enabled"
    if (mods / PREFORK).exists() or not (mods / MOD_PYTHON).exists():
        return []
    sites = {name: set().union(*map(_names, entries))
             for name, entries in site_entries(settings).items() if entries}
    handled = [name for name, names in sites.items() if "pythonhandler" in names]
    # Where else a server-wide PythonImport may be: apache2.conf and what it includes.
    others = [root / "apache2.conf", *sorted((root / "conf-enabled").glob("*.conf")),
              *sorted(mods.glob("*.conf"))] if handled else []
    if any("pythonimport" in names for names in sites.values()) or any(
            "pythonimport" in _names(path) for path in others):
        return []
    return handled


def warning(settings: Settings) -> str:
    """The warning for the plan and the preflight; "" when there is none."""
    sites = at_risk(settings)
    if not sites:
        return ""
    return (f"students' first requests after Apache starts may get HTTP 500: IVLE's "
            f"site {', '.join(sites)} hands them to mod_python under a threaded MPM and no "
            "PythonImport loads IVLE as each Apache child starts (see "
            "/usr/share/doc/ivle-maint/operations.md, "
            "\"The first requests after Apache starts\")")
