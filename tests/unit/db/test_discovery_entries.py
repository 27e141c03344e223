"""An entry of the migrations directory named like a migration is a
migration, whatever it is: listed by discover() (never skipped silently,
which could skip a schema change), then refused in one line by the gate
when it is not a root-owned regular file."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.db import classify, discovery
from ivle_maint.errors import MaintError


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


KINDS: dict[str, Callable[[Path], None]] = {
    "directory": lambda p: p.mkdir(),
    "symlink to a directory": lambda p: p.symlink_to("/etc"),
    "symlink to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
    "symlink to proc": lambda p: p.symlink_to("/proc/self/status"),
    "dangling symlink": lambda p: p.symlink_to(p.parent / "nowhere"),
    "symlink loop": lambda p: p.symlink_to(p),
    "FIFO": os.mkfifo,
    "socket": _socket,
    "file others may write": lambda p: (p.write_text("SELECT 1;\n"), p.chmod(0o666)),
}


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)),
       name=st.sampled_from(["20100101-01.sql", "20100101.sql", "20100101-01.SQL"]))
def test_an_entry_named_like_a_migration_is_listed_then_refused_unless_a_file(
        tmp_path_factory: pytest.TempPathFactory, kind: str, name: str) -> None:
    directory = tmp_path_factory.mktemp("migrations")
    directory.chmod(0o755)
    (directory / "20090101-01.sql").write_text("SELECT 1;\n")
    KINDS[kind](directory / name)
    found = discovery.discover(directory)
    assert [m.name for m in found] == ["20090101-01.sql", name], kind
    with pytest.raises(MaintError) as refused:
        discovery.check_writers(directory, [m.path for m in found])
        classify.classify(found[-1])
    assert "\n" not in str(refused.value)
