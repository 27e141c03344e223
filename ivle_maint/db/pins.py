"""The dumps that restore an upgrade's starting point: rotation keeps them.

A failed upgrade is retried (dpkg --configure -a, ivle-maint rerun), maybe
many times; with plain rotation the dump taken before its first migration,
the one its first error names, would soon be deleted.  So the backup
directory holds pinned.json:

    {"UPGRADE-ID": {"first": DUMP, "last": DUMP, "marker": SHA, "epoch": T,
                    "complete": false}, ...}

- first: the dump taken before the upgrade's first migration; kept until
  the upgrade completes, and after that while it is the last completed
  upgrade (rotation never deletes a pinned dump);
- last, marker, epoch: the newest dump of the upgrade, the migrations
  recorded in the marker when it was taken, and the start of the run's
  web-down window (epoch).  A retry of the same upgrade with the same
  marker and epoch takes no new dump: nothing was applied, and the site
  did not serve, since that dump.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import MaintError
from ..gates.rewrite import replace_file
from ..safepaths import read_nofollow

PINS_FILE = "pinned.json"
# Dumps a restore point holds (rollback/point.py): {DUMP: [HOLDER, ...]},
# kept whatever the upgrades' pins say, until every holder lets go.
HELD_FILE = "held.json"


@dataclass
class UpgradeDumps:
    first: str
    last: str
    marker: str
    epoch: str = ""
    complete: bool = False


def marker_fingerprint(applied_keys: Iterable[str]) -> str:
    """What the marker records, as one value: equal iff nothing was applied."""
    return hashlib.sha256("\n".join(sorted(applied_keys)).encode()).hexdigest()


def load(directory: Path) -> dict[str, UpgradeDumps]:
    path = directory / PINS_FILE
    try:
        data = json.loads(read_nofollow(path).decode("utf-8"))
        return {key: UpgradeDumps(**value) for key, value in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # Attribute: not a {}
        raise MaintError(f"{path}: unreadable ({exc}); it names the dumps that restore "
                         f"each upgrade's starting point: repair or remove it") from None


def save(directory: Path, pins: dict[str, UpgradeDumps]) -> None:
    data = {key: asdict(value) for key, value in sorted(pins.items())}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    replace_file(directory / PINS_FILE, text.encode(), mode=0o600)


def protected(directory: Path) -> set[str]:
    """Names of the dumps rotation must keep."""
    names: set[str] = set(_held(directory))
    for pin in load(directory).values():
        names |= {pin.first, pin.last} if not pin.complete else {pin.first}
    return names


def reusable(directory: Path, upgrade: str, marker: str, epoch: str) -> Path | None:
    """The upgrade's newest dump when nothing changed since it was taken."""
    pin = load(directory).get(upgrade)
    if pin is None or pin.complete or (pin.marker, pin.epoch) != (marker, epoch):
        return None
    path = directory / pin.last
    return path if path.is_file() else None


def record(directory: Path, upgrade: str, dump: Path, marker: str, epoch: str) -> None:
    """Note DUMP as the upgrade's newest; the first one stays its first."""
    pins = load(directory)
    pin = pins.get(upgrade)
    if pin is None:
        pin = UpgradeDumps(first=dump.name, last=dump.name, marker=marker, epoch=epoch)
    pin.last, pin.marker, pin.epoch = dump.name, marker, epoch
    pins[upgrade] = pin
    save(directory, pins)


def first_dump(directory: Path, upgrade: str) -> Path | None:
    """The dump that restores the database as it was before UPGRADE."""
    try:
        pin = load(directory).get(upgrade)
    except MaintError:
        return None
    if pin is None:
        return None
    path = directory / pin.first
    return path if os.path.isfile(path) else None


def complete(directory: Path, upgrade: str, unfinished: Iterable[str]) -> None:
    """UPGRADE completed: its first dump stays as the last completed one's;
    other completed upgrades' pins go, and so do those of upgrades that are
    neither UPGRADE nor still unfinished (abandoned)."""
    pins = load(directory)
    if not pins:
        return
    keep = set(unfinished)
    kept = {key: pin for key, pin in pins.items() if key in keep and not pin.complete}
    if upgrade in pins:
        pin = pins[upgrade]
        pin.complete = True
        kept[upgrade] = pin
    save(directory, kept)


def _held(directory: Path) -> dict[str, list[str]]:
    path = directory / HELD_FILE
    try:
        data = json.loads(read_nofollow(path).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MaintError(f"{path}: unreadable ({exc}); it names the dumps restore points "
                         f"hold: repair or remove it") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(h, str) for h in v) for v in data.values()):
        raise MaintError(f"{path}: not a record of held dumps: repair or remove it")
    return data


def hold(directory: Path, dump: str, holder: str) -> None:
    """HOLDER (a restore point) needs DUMP: rotation keeps it until released."""
    held = _held(directory)
    if holder not in held.setdefault(dump, []):
        held[dump].append(holder)
        _save_held(directory, held)


def release(directory: Path, holder: str) -> list[str]:
    """HOLDER lets go of its dumps; the names no one holds any more."""
    held = _held(directory)
    freed = [name for name, holders in held.items() if holders == [holder]]
    kept = {name: [h for h in holders if h != holder] for name, holders in held.items()}
    _save_held(directory, {name: holders for name, holders in kept.items() if holders})
    return freed


def _save_held(directory: Path, held: dict[str, list[str]]) -> None:
    text = json.dumps(held, indent=1, sort_keys=True) + "\n"
    replace_file(directory / HELD_FILE, text.encode(), mode=0o600)
