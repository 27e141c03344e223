"""Change ivle.conf's [media] version, touching nothing else in the file.

IVLE puts the media version into the URLs of its static files, so
browsers fetch fresh copies after an upgrade.  IVLE's upgrade procedure asks for a value
"that hasn't been used before", "the same on all slaves".  The nodes never
talk to each other, so the value is computed from what every node knows:

    base = the version being installed, sanitized (see sanitize())
    used = every value in this node's record (STATE/media-versions.json)
           plus the value ivle.conf holds now
    value = base if no used value is base or base.rN, else base.r(N+1)
            for the highest such N (base itself counting as N=1)

Every node that went through the same upgrades holds the same record and
(as IVLE's upgrade procedure demands) the same current value, so every node computes the
same value, and a reinstall of a version gets a value never used before:
"2.1", then "2.1.r2", then "2.1.r3".  Counting on from the highest N,
rather than taking the first gap, keeps a node whose record was lost in
step with the others: the value in use now (say "2.1.r2") is enough to
compute the next one ("2.1.r3").  Only a downgrade could then pick an old
value, and ivle-maint refuses downgrades.

The record also makes the change idempotent.  An upgrade run passes its
identity (``upgrade``): the first call records a new value under it, and
every later call for the same identity gets that value again.  By hand,
without an identity, the value last recorded for the version is reused
(a second ``ivle-maint media set 2.1`` changes nothing) unless
``reinstall`` asks for a new one.  The value is recorded before ivle.conf
is written, so a crash in between resumes with the same value.

The file itself is never re-serialized: configobj reads it (to validate
it and to find the value), the one line holding the value gets its value
text replaced, and configobj re-reads the result to prove that only that
value changed, all before anything is written.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from configobj import ConfigObj, ConfigObjError, Section

from ..config import Settings
from ..errors import ConfigError, MaintError
from ..gates import clock, trusted
from ..gates.rewrite import replace_file, write_state_file
from ..safepaths import read_nofollow

log = logging.getLogger(__name__)

MEDIA_RECORD = "media-versions.json"

UNSET, UNCHANGED, CHANGED, ADDED = "unset", "unchanged", "changed", "added"

# Characters left as they are in a version; anything else becomes "_".
# They are safe in a URL path and in an unquoted configobj value.
_UNSAFE = re.compile(r"[^A-Za-z0-9.+~_-]+")

# configobj's grammar for the lines that matter here (its own regexes are
# private); the re-parse in _verify() catches any disagreement.
_SECTION = re.compile(r"^\s*(?P<open>(?:\[\s*)+)(?P<name>.*?)(?:\s*\])+\s*(?:#.*)?$")
_KEYLINE = re.compile(
    r"""^(?P<indent>\s*)(?P<key>"[^"]*"|'[^']*'|[^'"=\s][^=]*?)\s*=(?P<gap>\s*)(?P<rest>.*)$"""
)
_SINGLE = re.compile(
    r"""^(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^'",#\s][^,#]*?))?(?P<after>\s*(?:#.*)?)$"""
)
_TRIPLE = ('"""', "'''")


# ---------------------------------------------------------------- values


def sanitize(version: str) -> str:
    """The installed version as a media version: '1:2.0-1 beta' -> '1_2.0-1_beta'."""
    base = _UNSAFE.sub("_", version.strip()).strip("._")
    if not base:
        raise MaintError(f"cannot make a media version out of {version!r}")
    return base


# The longest media version: a version's (versions.check: 100 characters)
# and a reinstall's ".rN".
VALUE_MAX = 128


def is_value(value: object) -> bool:
    """Is VALUE a media version as this module makes one (sanitize's
    characters, safe in a URL path and an unquoted configobj value)?  The
    gate for a value another node, or anyone with IVLE's database login,
    wrote into ivle_maint_media: a slave writes it into its ivle.conf."""
    return isinstance(value, str) and 0 < len(value) <= VALUE_MAX and \
        _UNSAFE.search(value) is None and value.strip("._") == value


def reinstall_number(version: str, value: str) -> int | None:
    """N of VALUE as next_value names VERSION's values (BASE: 1, BASE.rN: N);
    None for a value of another form."""
    base = sanitize(version)
    found = re.fullmatch(re.escape(base) + r"(?:\.r([0-9]+))?", value)
    return int(found[1] or 1) if found else None


def next_value(version: str, used: set[str]) -> str:
    """BASE, or BASE.rN with N one more than the highest N among USED (BASE is N=1)."""
    base = sanitize(version)
    taken = [n for value in used if (n := reinstall_number(version, value)) is not None]
    n = max(taken, default=0) + 1
    return base if n == 1 else f"{base}.r{n}"


@dataclass
class RecordEntry:
    value: str
    version: str
    upgrade: str | None = None
    time: str = ""


def _entry(data: object) -> RecordEntry:
    """One entry of the record as ivle-maint writes it (ValueError or
    TypeError otherwise): its value is one ivle-maint makes (is_value: it
    goes into ivle.conf and IVLE's URLs), the rest strings (upgrade: or null)."""
    if not isinstance(data, dict):
        raise TypeError(f"an entry is {type(data).__name__}, not an object")
    entry = RecordEntry(**data)
    if not is_value(entry.value):
        raise ValueError(f"value {entry.value!r} is no media version ivle-maint makes")
    if not isinstance(entry.version, str) or not isinstance(entry.time, str) or \
            not isinstance(entry.upgrade, str | None):
        raise TypeError(f"the entry of value {entry.value} holds a field that is no string")
    return entry


@dataclass
class Record:
    """The media versions this node has used, oldest first."""

    path: Path
    entries: list[RecordEntry] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path) -> Record:
        path = state_dir / MEDIA_RECORD
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(read_nofollow(path).decode("utf-8"))
            entries = [_entry(e) for e in data["entries"]]
            return cls(path, entries)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise MaintError(
                f"{path}: unreadable media version record ({exc}); it lists the values "
                f"used on this site: repair it from another node's copy"
            ) from None

    def save(self) -> None:
        data = {"entries": [asdict(e) for e in self.entries]}
        write_state_file(self.path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o644)

    @property
    def used(self) -> set[str]:
        return {e.value for e in self.entries}

    def resolve(self, version: str, current: str | None, upgrade: str | None = None,
                reinstall: bool = False) -> tuple[str, bool]:
        """(value, is it new) for installing VERSION; see the module docstring."""
        if upgrade is not None:
            for entry in self.entries:
                if entry.upgrade == upgrade:
                    return entry.value, False
        elif not reinstall:
            latest = [e for e in self.entries if e.version == version]
            if latest:
                return latest[-1].value, False
        used = self.used | ({current} if current else set())
        return next_value(version, used), True

    def add(self, value: str, version: str, upgrade: str | None) -> None:
        stamp = clock.utc_stamp("%Y-%m-%dT%H:%M:%SZ")
        self.entries.append(RecordEntry(value, version, upgrade, stamp))


# ---------------------------------------------------------------- the file


@dataclass(frozen=True)
class ConfFile:
    """ivle.conf as bytes, split exactly as configobj splits a file."""

    path: Path
    data: bytes
    lines: tuple[bytes, ...]
    text: tuple[str, ...]  # decoded, without line ends or a BOM
    conf: ConfigObj

    @property
    def newline(self) -> bytes:
        first = next((line for line in self.lines if line.endswith(b"\n")), b"\n")
        return b"\r\n" if first.endswith(b"\r\n") else b"\n"


@dataclass(frozen=True)
class Slot:
    """Where [media] version is, or where it would be added."""

    line: int | None  # the line holding it; None when absent
    start: int = 0  # the value text's span in that line (decoded)
    end: int = 0
    quote: str = ""
    value: str | None = None
    insert_after: int | None = None  # when absent: after this line (None: at end)
    indent: str = ""
    has_section: bool = False


def _split(data: bytes) -> list[bytes]:
    """As configobj's readlines() of a file: on b"\\n" only, line ends kept."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def _parse(path: Path, lines: list[bytes]) -> ConfigObj:
    """configobj's reading, raw (no interpolation); one-line error on fault."""
    try:
        return ConfigObj(lines, encoding="utf-8", interpolation=False, list_values=True)
    except ConfigObjError as exc:
        first = (getattr(exc, "errors", None) or [exc])[0]
        line = getattr(first, "line_number", None)
        where = f" line {line}" if line else ""
        text = str(first).split(" at line ")[0].rstrip(".")
        raise MaintError(f"{path}{where}: {text}; nothing written") from None
    except UnicodeDecodeError as exc:
        raise MaintError(f"{path}: not UTF-8 ({exc.reason}); nothing written") from None


def read_conf(path: Path) -> ConfFile:
    """Read and parse ivle.conf; a malformed file is a one-line MaintError."""
    try:
        data = trusted.read(path, trusted.IVLE_CONF)
    except FileNotFoundError:  # bad input (exit 2), as for every other command
        raise ConfigError(f"{path}: no such file (set IVLECONF or [paths] ivle_conf_dir)") from None
    except OSError as exc:
        raise MaintError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lines = _split(data)
    conf = _parse(path, lines)
    text = []
    for number, raw in enumerate(lines, 1):
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MaintError(f"{path} line {number}: not UTF-8; nothing written") from None
        text.append(decoded.lstrip("\ufeff") if number == 1 else decoded)
    return ConfFile(path, data, tuple(lines), tuple(t.rstrip("\r\n") for t in text), conf)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _scan(cf: ConfFile) -> tuple[list[int], int | None, int | None, str]:
    """(lines of [media] version, [media] header line, its last line, key indent)."""
    path: list[str] = []
    found: list[int] = []
    header = last = None
    indent = ""
    closing: str | None = None  # inside a triple-quoted value: its quote
    for i, line in enumerate(cf.text):
        if closing is not None:
            if closing in line:
                closing = None
                last = i if path == ["media"] else last
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            match = _SECTION.match(line)
            if match:
                depth = match["open"].count("[")
                path = [*path[: depth - 1], _unquote(match["name"])]
                if path == ["media"]:
                    header = last = i
            continue
        match = _KEYLINE.match(line)
        if not match:
            continue
        rest = match["rest"]
        if rest[:3] in _TRIPLE and rest[3:].find(rest[:3]) == -1:
            closing = rest[:3]  # the value goes on until a line holding this quote
        if path == ["media"]:
            last = i
            indent = match["indent"]
            if _unquote(match["key"]) == "version":
                found.append(i)
    return found, header, last, indent


def locate(cf: ConfFile) -> Slot:
    """Find [media] version with configobj and in the text; they must agree."""
    media = cf.conf.get("media")
    if media is not None and not isinstance(media, Section):
        raise MaintError(f"{cf.path}: 'media' is a value, not a [media] section; nothing written")
    parsed = media.get("version") if media is not None else None
    if isinstance(parsed, list):
        raise MaintError(f"{cf.path}: [media] version is a list; nothing written")
    found, header, last, indent = _scan(cf)
    if parsed is None and not found:
        after = last if header is not None else None
        return Slot(None, insert_after=after, indent=indent, has_section=header is not None)
    if len(found) != 1 or parsed is None:
        raise MaintError(f"{cf.path}: cannot tell which line holds [media] version; "
                         f"nothing written")
    number = found[0]
    line = cf.text[number]
    key = _KEYLINE.match(line)
    assert key is not None  # _scan matched it
    rest_at = key.start("rest")
    if key["rest"][:3] in _TRIPLE:
        raise MaintError(f"{cf.path} line {number + 1}: [media] version is a triple-quoted "
                         f"value; set it by hand, nothing written")
    value = _SINGLE.match(key["rest"])
    if value is None:
        raise MaintError(f"{cf.path} line {number + 1}: cannot parse [media] version's value; "
                         f"nothing written")
    group = next((g for g in ("dq", "sq", "bare") if value[g] is not None), None)
    text = value[group] if group else ""
    if text != parsed:
        raise MaintError(f"{cf.path} line {number + 1}: [media] version reads as {parsed!r} "
                         f"but the line says {text!r}; nothing written")
    if group in ("dq", "sq"):
        start, end = rest_at + value.start(group), rest_at + value.end(group)
    else:
        start = rest_at + value.start("after") if group is None else rest_at + value.start(group)
        end = start if group is None else rest_at + value.end(group)
    quote = {"dq": '"', "sq": "'"}.get(group or "", "")
    return Slot(number, start, end, quote, parsed, has_section=True)


def rewrite(cf: ConfFile, slot: Slot, value: str) -> bytes:
    """The file's bytes with [media] version set to VALUE; all else as it was."""
    lines = list(cf.lines)
    nl = cf.newline
    if slot.line is not None:
        raw = lines[slot.line].decode("utf-8")
        offset = len(raw) - len(raw.lstrip("\ufeff")) if slot.line == 0 else 0
        start, end = slot.start + offset, slot.end + offset
        before = raw[:start]
        after = raw[end:]
        if start == end:  # 'version =' had no value: keep 'key = value' readable
            before += "" if before.endswith((" ", "\t")) else " "
            after = " " + after if after.startswith("#") else after
        lines[slot.line] = (before + value + after).encode("utf-8")
        return b"".join(lines)
    added = f"{slot.indent}version = {value}".encode() + nl
    if not slot.has_section:
        added = b"[media]" + nl + added
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += nl
        return b"".join([*lines, added])
    at = slot.insert_after if slot.insert_after is not None else len(lines) - 1
    if not lines[at].endswith(b"\n"):
        lines[at] += nl
    lines.insert(at + 1, added)
    return b"".join(lines)


def _verify(cf: ConfFile, new: bytes, value: str) -> None:
    """Re-read NEW with configobj: VALUE reads back and nothing else changed."""
    after = _parse(cf.path, _split(new))
    expected = cf.conf.dict()
    expected.setdefault("media", {})["version"] = value
    if after.dict() != expected:
        raise MaintError(f"{cf.path}: setting [media] version would change other values; "
                         f"nothing written")
    old_lines, new_lines = cf.lines, _split(new)
    changed = sum(1 for a, b in zip(old_lines, new_lines, strict=False) if a != b)
    if len(old_lines) == len(new_lines) and changed != 1:
        raise MaintError(f"{cf.path}: rewrite changed {changed} lines; nothing written")


# ----------------------------------------------------- planning and changing


@dataclass(frozen=True)
class MediaResult:
    """What set_media_version did to ivle.conf."""

    path: Path
    action: str  # UNSET (left alone), UNCHANGED, CHANGED or ADDED
    old: str | None
    new: str | None
    backup: Path | None = None

    @property
    def summary(self) -> str:
        if self.action == UNSET:
            return "[media] version is not set: left alone"
        if self.action == UNCHANGED:
            return f"[media] version is already {self.new}"
        if self.action == ADDED:
            return f"[media] version set to {self.new} (it was not set)"
        return f"[media] version {self.old} -> {self.new}"

    @property
    def metrics(self) -> dict[str, Any]:
        return {"media_action": self.action, "media_old": self.old, "media_new": self.new}


@dataclass(frozen=True)
class MediaPlan:
    """What set_media_version would do, without doing it."""

    path: Path
    current: str | None
    target: str | None  # None: the file would be left alone
    record: tuple[RecordEntry, ...]


def _current(slot: Slot) -> str | None:
    # An empty value is no media version (IVLE then uses none).
    return slot.value or None


def current_media_version(conf_path: Path) -> str | None:
    """ivle.conf's [media] version now (None: unset or empty, IVLE then
    puts none in its URLs); a file this module could not rewrite is a
    one-line error, as for every other reader of it here."""
    return _current(locate(read_conf(conf_path)))


def plan_media_version(conf_path: Path, state_dir: Path, version: str | None = None, *,
                       upgrade: str | None = None, reinstall: bool = False,
                       force: bool = False) -> MediaPlan:
    """The current value, the record, and the value VERSION would get."""
    current = current_media_version(conf_path)
    record = Record.load(state_dir)
    target = None
    if version is not None and (current is not None or force):
        target = record.resolve(version, current, upgrade, reinstall)[0]
    return MediaPlan(conf_path, current, target, tuple(record.entries))


def set_media_version(conf_path: Path, state_dir: Path, backup_dir: Path, version: str, *,
                      upgrade: str | None = None, reinstall: bool = False,
                      force: bool = False) -> MediaResult:
    """Set [media] version for installing VERSION; see the module docstring.

    UPGRADE identifies one upgrade run (e.g. its journal): the same
    identity always gets the same value, a new one a new value.  Without
    it, the value last recorded for VERSION is reused unless REINSTALL.
    An unset version is only added when FORCE is true.  Nothing is
    written unless every check passes; the previous file goes to
    BACKUP_DIR.
    """
    cf = read_conf(conf_path)
    slot = locate(cf)
    current = _current(slot)
    if current is None and not force:
        return MediaResult(conf_path, UNSET, None, None)
    record = Record.load(state_dir)
    target, is_new = record.resolve(version, current, upgrade, reinstall)
    if target == current:
        return MediaResult(conf_path, UNCHANGED, current, current)
    new = rewrite(cf, slot, target)
    _verify(cf, new, target)
    if trusted.read(conf_path, trusted.IVLE_CONF) != cf.data:
        raise MaintError(f"{conf_path}: changed while being rewritten; nothing written, "
                         f"run again")
    if is_new:  # recorded first: a crash before the write resumes with it
        record.add(target, version, upgrade)
        record.save()
    # expect: the very file replaced, read where its backup is taken, is the
    # one the new content was computed from (no other writer's change lost).
    backup = replace_file(conf_path, new, backup_dir=backup_dir, expect=cf.data,
                          purpose=trusted.IVLE_CONF)
    reread = current_media_version(conf_path)
    if reread != target:
        raise MaintError(f"{conf_path}: [media] version reads back as {reread!r}, "
                         f"not {target!r}; the previous file is {backup}")
    log.info("%s: [media] version %s -> %s (backup %s)", conf_path, current, target, backup)
    action = ADDED if current is None else CHANGED
    return MediaResult(conf_path, action, current, target, backup)


def change_media_version(settings: Settings, version: str, *, upgrade: str | None = None,
                         reinstall: bool = False, force: bool | None = None) -> MediaResult:
    """set_media_version with the paths and [media] force from the settings."""
    return set_media_version(
        settings.ivle_conf_dir / "ivle.conf",
        settings.path_of("state"),
        settings.path_of("backup"),
        version,
        upgrade=upgrade,
        reinstall=reinstall,
        force=bool(settings["media"]["force"]) if force is None else force,
    )
