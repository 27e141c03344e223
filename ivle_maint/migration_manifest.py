"""The new version's migrations, as dh_ivle_maint embeds them in IVLE's preinst.

During `NEW-preinst upgrade OLD NEW` the new files are not unpacked yet,
so the preflight would check only the old version's migrations.  The
debhelper add-on (dh_ivle_maint) writes the new version's migration files
into the generated preinst as a manifest, which the preinst hands to
`ivle-maint hook --new-migrations - preinst ...` on stdin.  The format is
JSON lines, so no line of it can end the here-document that carries it:

    {"format": "ivle-maint-migrations/1", "package": "ivle", "version": "1.1", "count": 2}
    {"name": "20100301-01.sql", "sha256": "...", "text": "BEGIN; ..."}

Each file's text is checked against its sha256 (a preinst edited by hand
or truncated fails here, before anything stops), then written to a
temporary directory that the preflight checks as the new migrations.

`ivle-maint plan --new-migrations` reads the same manifest, or the whole
preinst that carries it (`dpkg-deb --info ivle_NEW.deb preinst`), so that
an operator sees the new version's pending migrations before upgrading.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MaintError
from .gates import trusted, waits
from .gates.rewrite import replace_file

FORMAT = "ivle-maint-migrations/1"
# The here-document around the manifest in dh_ivle_maint's preinst snippet
# (debhelper/autoscripts/preinst-ivle-maint).
HEREDOC = "IVLE_MAINT_MIGRATIONS"


@dataclass(frozen=True)
class Manifest:
    package: str
    version: str
    files: dict[str, str]  # file name -> text

    def write_to(self, directory: Path) -> Path:
        """Write every file into DIRECTORY (which must exist); returns it."""
        for name, text in self.files.items():
            path = directory / name
            # 0644 whatever the umask: the preflight checks who can write
            replace_file(path, text.encode("utf-8"), mode=0o644)
        return directory


def _record(line: str, number: int, where: str) -> dict[str, object]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise MaintError(f"{where}: line {number} is not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise MaintError(f"{where}: line {number} is not a JSON object")
    return record


def _from_preinst(text: str, where: str) -> str:
    """The manifest inside a preinst dh_ivle_maint wrote; other text as it is.

    A manifest's own lines are JSON objects, so the opening line of the
    here-document can only come from a script around it.
    """
    opening = f"<<'{HEREDOC}'\n"
    if text.startswith("#!") and opening not in text:
        raise MaintError(f"{where}: a script without dh_ivle_maint's migrations manifest "
                         "(a package built without dh-sequence-ivle-maint?)")
    if opening not in text or text.lstrip().startswith("{"):
        return text
    body = text.split(opening, 1)[1]
    return body.split(f"\n{HEREDOC}\n", 1)[0] if f"\n{HEREDOC}\n" in body else body


def _file_name(name: str) -> bool:
    """A name dh_ivle_maint could have read from a directory and that can
    be written in one: one component, printable (no NUL, no lone
    surrogate, no newline), at most 255 bytes."""
    return (bool(name) and "/" not in name and not name.startswith(".")
            and name.isprintable() and len(name.encode("utf-8", "surrogateescape")) <= 255)


def parse(text: str, where: str = "migrations manifest") -> Manifest:
    """Check and read a manifest, or the preinst that carries one; any
    defect is a one-line MaintError."""
    lines = [line for line in _from_preinst(text, where).splitlines() if line.strip()]
    if not lines:
        raise MaintError(f"{where}: empty (expected a {FORMAT} header)")
    header = _record(lines[0], 1, where)
    if header.get("format") != FORMAT:
        raise MaintError(f"{where}: not a {FORMAT} manifest")
    files: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        record = _record(line, number, where)
        name, digest, body = record.get("name"), record.get("sha256"), record.get("text")
        if not (isinstance(name, str) and isinstance(digest, str) and isinstance(body, str)):
            raise MaintError(f"{where}: line {number} lacks name, sha256 or text")
        if not _file_name(name):
            raise MaintError(f"{where}: line {number}: {name!r} is not a file name")
        if name in files:
            raise MaintError(f"{where}: {name} is listed twice")
        try:  # JSON carries lone surrogates ("\udcff") that UTF-8 has no bytes for
            data = body.encode("utf-8")
        except UnicodeEncodeError:
            raise MaintError(f"{where}: {name} is not UTF-8 text") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise MaintError(f"{where}: {name} does not match its sha256 (damaged manifest)")
        files[name] = body
    count = header.get("count")
    if count != len(files):
        raise MaintError(f"{where}: header says {count} files, found {len(files)} (truncated?)")
    return Manifest(str(header.get("package", "")), str(header.get("version", "")), files)


def read(source: str) -> Manifest:
    """The manifest from a file (read by the gate, gates/trusted.py), or
    from stdin when SOURCE is '-' (gates/waits.py: bounded in time and size)."""
    if source == "-":
        where = "migrations manifest on stdin"
        data = waits.read_pipe(sys.stdin.fileno(), where)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MaintError(f"{where}: not UTF-8: {exc}") from None
        # As a file is read (universal newlines), so both ways parse alike.
        return parse(text.replace("\r\n", "\n").replace("\r", "\n"), where)
    try:
        text = trusted.read(source, trusted.MANIFEST).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MaintError(f"{source}: cannot read the migrations manifest: {exc}") from None
    return parse(text, source)
