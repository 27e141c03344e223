"""ivle-maint media show|set on sandbox nodes: their real ivle.conf, settings and dirs."""

from __future__ import annotations

import difflib
import os

import pytest

from ivle_maint.cli import main
from ivle_maint.config import load_ivle_conf

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def make_slave(node_factory):
    def make(media_version: str | None = "1.0", **kwargs):
        return node_factory(users=1, role="slave", mount=False, services=False,
                            media_version=media_version, **kwargs)
    return make


def media(node, *args: str) -> int:
    return main(["--config", str(node.maint_conf), "media", *args])


def diff(old: str, new: str) -> list[str]:
    return [line for line in difflib.ndiff(old.splitlines(True), new.splitlines(True))
            if line[:1] in "+-"]


def test_set_changes_one_line_keeps_owner_mode_and_backs_up(make_slave, capsys):
    node = make_slave()
    os.chown(node.ivle_conf, 0, 33)  # root:www-data 0640, as Apache reads it
    before, st = node.ivle_conf.read_text(), node.ivle_conf.stat()
    assert media(node, "set", "1.1") == 0
    after = node.ivle_conf.read_text()
    assert diff(before, after) == ["- version = 1.0\n", "+ version = 1.1\n"]
    assert "# Bump on every upgrade so browsers fetch new media" in after
    assert "port = " in after and "# the user management server on the master" in after
    new_st = node.ivle_conf.stat()
    assert (new_st.st_uid, new_st.st_gid, new_st.st_mode) == (0, 33, st.st_mode)
    backups = list(node.backup_dir.iterdir())
    assert len(backups) == 1 and backups[0].read_text() == before
    # IVLE's own reading (its spec, ${} templates) sees the new value.
    assert load_ivle_conf(node.conf_dir).media_version == "1.1"
    err = capsys.readouterr().err
    assert "[media] version 1.0 -> 1.1" in err and f"previous file: {backups[0]}" in err


def test_set_again_is_a_no_op_and_reinstall_gets_a_new_value(make_slave, capsys):
    node = make_slave()
    assert media(node, "set", "1.1") == 0
    mtime = node.ivle_conf.stat().st_mtime_ns
    assert media(node, "set", "1.1") == 0
    assert node.ivle_conf.stat().st_mtime_ns == mtime
    assert len(list(node.backup_dir.iterdir())) == 1
    assert "already 1.1" in capsys.readouterr().err
    assert media(node, "set", "1.1", "--reinstall") == 0
    assert load_ivle_conf(node.conf_dir).media_version == "1.1.r2"


def test_two_slaves_agree_without_talking(make_slave):
    a, b = make_slave(), make_slave()
    for args in (["1.1"], ["1.2"], ["1.2", "--reinstall"], ["1.2"]):
        assert media(a, "set", *args) == 0
        assert media(b, "set", *args) == 0
        assert load_ivle_conf(a.conf_dir).media_version == \
            load_ivle_conf(b.conf_dir).media_version
    assert load_ivle_conf(a.conf_dir).media_version == "1.2.r2"
    assert (a.state_dir / "media-versions.json").exists()


def test_show_reports_current_record_and_next_value(make_slave, capsys):
    node = make_slave()
    media(node, "set", "1.1")
    capsys.readouterr()
    before = node.ivle_conf.read_bytes()
    assert media(node, "show", "--for", "1.2") == 0
    out = capsys.readouterr().out
    assert f"ivle.conf: {node.ivle_conf}" in out
    assert "[media] version: 1.1" in out
    assert "  1.1  (IVLE 1.1, " in out
    assert "media set 1.2: would write 1.2" in out
    assert node.ivle_conf.read_bytes() == before


def test_unset_is_left_alone_unless_forced(make_slave, capsys):
    node = make_slave(media_version=None)
    before = node.ivle_conf.read_bytes()
    assert media(node, "set", "1.1") == 0
    assert node.ivle_conf.read_bytes() == before
    assert not node.backup_dir.exists() or not any(node.backup_dir.iterdir())
    assert "not set: left alone" in capsys.readouterr().err
    assert media(node, "set", "1.1", "--force") == 0
    after = node.ivle_conf.read_bytes()
    assert after.startswith(before) and after[len(before):] == b"[media]\nversion = 1.1\n"
    assert load_ivle_conf(node.conf_dir).media_version == "1.1"


def test_force_from_the_settings(make_slave):
    node = make_slave(media_version=None)
    with open(node.maint_conf, "a") as handle:
        handle.write("\n[media]\nforce = True\n")
    assert media(node, "set", "2.0") == 0
    assert load_ivle_conf(node.conf_dir).media_version == "2.0"


def test_malformed_ivle_conf_is_one_line_naming_file_and_line(make_slave, capsys):
    node = make_slave()
    with open(node.ivle_conf, "a") as handle:
        handle.write("[broken\n")
    before = node.ivle_conf.read_bytes()
    line = before.decode().count("\n")
    assert media(node, "set", "1.1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"ivle-maint: error: {node.ivle_conf} line {line}: Invalid line")
    assert node.ivle_conf.read_bytes() == before
    assert not (node.state_dir / "media-versions.json").exists()
    assert not node.backup_dir.exists() or not any(node.backup_dir.iterdir())
