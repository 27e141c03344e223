"""The record of the last install or upgrade this node completed.

The next upgrade's baseline step reads from it which migrations the old
version shipped, once the new code has replaced them on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import Settings
from .context import UpgradeContext
from .errors import MaintError
from .gates.rewrite import write_state_file
from .safepaths import read_nofollow

INSTALLED_RECORD = "installed.json"


def read_installed(settings: Settings) -> dict[str, Any] | None:
    """The record of the last install or upgrade this node completed."""
    path = settings.path_of("state") / INSTALLED_RECORD
    try:
        data: dict[str, Any] = json.loads(read_nofollow(path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MaintError(f"{path}: unreadable: {exc}") from None
    return data


def recorded_version(settings: Settings) -> str | None:
    record = read_installed(settings)
    return str(record["version"]) if record else None


def record_installed(ctx: UpgradeContext) -> None:
    """Remember NEW and the migrations it shipped, for the next upgrade's baseline."""
    directory = ctx.migrations
    names = sorted(p.name for p in directory.glob("*.sql")) if directory.is_dir() else []
    data = {"version": ctx.new, "migrations_dir": str(directory), "migrations": names}
    path = ctx.settings.path_of("state") / INSTALLED_RECORD
    write_state_file(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o644)


def record_fresh_install(ctx: UpgradeContext) -> str:
    """A fresh install runs no procedure; it records what an upgrade will need."""
    record_installed(ctx)
    return f"fresh install of {ctx.new}: recorded its migrations for the next upgrade"


def old_migration_files(ctx: UpgradeContext) -> list[Path] | None:
    """The migrations OLD shipped, or None when nothing says which they were.

    Before the new code is unpacked they are the files on disk; afterwards
    only the record of the last install knows them.
    """
    record = read_installed(ctx.settings)
    if record and record.get("version") == ctx.old:
        directory = Path(record["migrations_dir"])
        return [directory / name for name in record["migrations"]]
    if not ctx.code_is_new:
        return sorted(ctx.settings.path_of("migrations").glob("*.sql"))
    return None
