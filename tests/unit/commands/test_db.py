"""ivle-maint db classify --all: offline, as an administrator runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ivle_maint.cli import main
from ivle_maint.db import pgparse

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="ivle-maint db needs root"),
    pytest.mark.skipif(not pgparse.available(), reason="pglast is not installed"),
]


def classify(tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str],
             *options: str) -> tuple[int, list[str], str]:
    migrations = tmp_path / "migrations"
    migrations.mkdir(mode=0o755)
    for name, text in files.items():
        (migrations / name).write_text(text)
    conf = tmp_path / "ivle-maint.conf"
    conf.write_text("")
    status = main(["--config", str(conf), "db", "classify", "--all",
                   "--migrations", str(migrations), *options])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


FILES = {
    "20240101-01.sql": "BEGIN;\nCREATE TABLE n (a int);\nCOMMIT;\n",
    "20240102-01.sql": "CREATE INDEX i ON login (unixid);\n",
    "20240103-01.sql": "-- ivle-maint: additive\nALTER TABLE login DROP COLUMN state;\n",
}


def test_classify_all_prints_key_class_and_deciding_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = classify(tmp_path, capsys, FILES)
    assert status == 1, err  # one refused
    assert lines[0].split()[:4] == ["20240101-01", "additive", "line", "2:"]
    assert lines[1].split()[:2] == ["20240102-01", "locking"]
    assert "line 1: CREATE INDEX on login without CONCURRENTLY" in lines[1]
    assert "CREATE INDEX CONCURRENTLY" in lines[1].split(": ", 2)[2]
    assert lines[2].split()[:2] == ["20240103-01", "refused"]
    assert "--accept-class 20240103-01" in lines[2]
    assert lines[3] == "release class: destructive (decided by 20240103-01)"


def test_accept_class_takes_the_declared_class(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = classify(tmp_path, capsys, FILES, "--accept-class", "20240103-01")
    assert status == 0, err
    assert lines[2].split()[:2] == ["20240103-01", "additive"]
    assert "accepted over destructive" in lines[2]
    assert lines[3] == "release class: locking (decided by 20240102-01)"


def test_accept_class_of_an_unknown_key_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = classify(tmp_path, capsys, FILES, "--accept-class", "20990101-01")
    assert status == 2
    assert err == "ivle-maint: error: db classify --accept-class 20990101-01: not a migration " \
        "listed\n"
