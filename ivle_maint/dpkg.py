"""What dpkg knows of a package."""

from __future__ import annotations

from . import system
from .errors import MaintError


def package_version(package: str) -> str:
    """The version dpkg has for PACKAGE (during postinst: the new one)."""
    done = system.run(["dpkg-query", "-W", "-f=${Version}", package], keep_stdout=True)
    if not done.ok or not done.stdout.strip():
        raise MaintError(f"dpkg does not know package {package}; pass --package-version")
    return done.stdout.strip()
