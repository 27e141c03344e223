"""A migrations manifest is input (a preinst edited by hand, a damaged
package, stdin): whatever names and texts it carries, parse() refuses it
in one line or gives files that write_to() puts down byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ivle_maint import migration_manifest as manifest
from ivle_maint.errors import MaintError

NAMES = st.one_of(
    st.text(max_size=20).map(lambda s: s + ".sql"),
    st.sampled_from(["20100101-01.sql", "a\x00.sql", "\udcff.sql", "x" * 300 + ".sql",
                     "20100101-01.sql\n", "..sql", "20100101-01.sql/", "\u202e.sql"]),
)
TEXTS = st.one_of(st.text(max_size=40), st.sampled_from(["SELECT 1;\n", "\udcff", "\x00"]))


def _manifest(files: list[tuple[str, str]]) -> str:
    """What dh_ivle_maint writes (ASCII JSON lines), a sha256 of each
    text's UTF-8 where it has one."""
    lines = [json.dumps({"format": manifest.FORMAT, "package": "ivle", "version": "1.1",
                         "count": len(files)})]
    for name, text in files:
        data = text.encode("utf-8", "surrogatepass")
        lines.append(json.dumps({"name": name, "sha256": hashlib.sha256(data).hexdigest(),
                                 "text": text}))
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@example(files=[("a\x00.sql", "SELECT 1;\n")])
@example(files=[("20100101-01.sql", "\udcff")])
@given(files=st.lists(st.tuples(NAMES, TEXTS), max_size=3))
def test_any_manifest_is_refused_in_one_line_or_written_byte_for_byte(
        tmp_path_factory: pytest.TempPathFactory, files: list[tuple[str, str]]) -> None:
    try:
        found = manifest.parse(_manifest(files))
    except MaintError as exc:
        assert "\n" not in str(exc)
        return
    directory = tmp_path_factory.mktemp("new")
    try:
        found.write_to(directory)
    except MaintError as exc:
        assert "\n" not in str(exc)
        return
    for name, text in found.files.items():
        assert (directory / name).read_bytes() == text.encode("utf-8")
        assert Path(directory / name).parent == directory
