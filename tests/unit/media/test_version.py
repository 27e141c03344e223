"""[media] version: the value rule, byte-for-byte rewrites, the record, atomicity."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest
from configobj import ConfigObj

from ivle_maint.errors import MaintError
from ivle_maint.gates import rewrite as atomic
from ivle_maint.media.version import (
    ADDED,
    CHANGED,
    MEDIA_RECORD,
    UNCHANGED,
    UNSET,
    next_value,
    plan_media_version,
    sanitize,
    set_media_version,
)

CONF = """\
# IVLE configuration, kept by hand.
# Don't lose these comments.

[paths]
prefix = /opt/ivle     # installed here
share = ${prefix}/share/ivle
    [[jails]]
    src = '/srv/ivle/jails'
    template = ${src}/__base__

[media]
# Bump on every upgrade (same on all slaves).
version = 1.0   # inline comment stays

[database]
name = "ivle"
password = s3cret#not a comment?
"""


class Node:
    """One node's ivle.conf, state and backup directories."""

    def __init__(self, root: Path, text: str | bytes = CONF) -> None:
        self.root = root
        self.etc = root / "etc"
        self.etc.mkdir(parents=True)
        self.conf = self.etc / "ivle.conf"
        self.conf.write_bytes(text.encode() if isinstance(text, str) else text)
        self.conf.chmod(0o640)
        self.state = root / "state"
        self.backup = root / "backup"

    def set(self, version: str, **kwargs):
        return set_media_version(self.conf, self.state, self.backup, version, **kwargs)

    def value(self) -> str | None:
        return ConfigObj(str(self.conf)).get("media", {}).get("version")

    def backups(self) -> list[Path]:
        return sorted(self.backup.iterdir()) if self.backup.exists() else []


@pytest.fixture
def node(tmp_path) -> Node:
    return Node(tmp_path / "node")


def changed_lines(old: bytes, new: bytes) -> list[str]:
    diff = difflib.ndiff(old.decode().splitlines(True), new.decode().splitlines(True))
    return [line for line in diff if line[:1] in "+-"]


# ------------------------------------------------------------ the value rule


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.1", "2.1"),
        ("1.1-2ubuntu1~ppa1", "1.1-2ubuntu1~ppa1"),
        ("1:2.0+git20100101", "1_2.0+git20100101"),
        ("  2.0 beta/2 ", "2.0_beta_2"),
        ("0.9#x,y", "0.9_x_y"),  # a comment or list marker must never reach the file
    ],
)
def test_sanitize(version, expected):
    assert sanitize(version) == expected


def test_sanitize_refuses_nothing_left():
    with pytest.raises(MaintError, match="cannot make a media version"):
        sanitize(" /:: ")


def test_next_value_skips_used_values_in_order():
    assert next_value("2.1", set()) == "2.1"
    assert next_value("2.1", {"2.1"}) == "2.1.r2"
    assert next_value("2.1", {"2.1", "2.1.r2", "2.0"}) == "2.1.r3"
    # Counting on from the highest, not filling gaps: a node that only knows
    # the value in use must reach the same answer as one with the history.
    assert next_value("2.1", {"2.1.r2"}) == "2.1.r3"
    assert next_value("2.1", {"2.10", "2.1.rc1", "12.1"}) == "2.1"


# ------------------------------------------------------------ byte for byte


def test_change_is_exactly_one_line_keeping_comments(node):
    before = node.conf.read_bytes()
    result = node.set("1.1", upgrade="u1")
    after = node.conf.read_bytes()
    assert (result.action, result.old, result.new) == (CHANGED, "1.0", "1.1")
    assert changed_lines(before, after) == [
        "- version = 1.0   # inline comment stays\n",
        "+ version = 1.1   # inline comment stays\n",
    ]
    assert b"# Don't lose these comments." in after
    reread = ConfigObj(str(node.conf))
    assert reread["media"].inline_comments["version"] == "# inline comment stays"
    assert reread["database"]["password"] == ConfigObj(before.splitlines())["database"]["password"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('version = "1.0"', 'version = "1.1"'),
        ("version='1.0'  # q", "version='1.1'  # q"),
        ("\tversion\t=\t1.0", "\tversion\t=\t1.1"),
        ('"version" = 1.0 rc1', '"version" = 1.1'),
        ("version = 1.0#tight", "version = 1.1#tight"),
    ],
)
def test_quoting_and_spacing_are_kept(tmp_path, line, expected):
    node = Node(tmp_path, f"[media]\n{line}\n[other]\nx = 1\n")
    node.set("1.1")
    assert node.conf.read_text() == f"[media]\n{expected}\n[other]\nx = 1\n"


def test_crlf_bom_and_no_final_newline_are_kept(tmp_path):
    text = b"\xef\xbb\xbf# c\r\n[media]\r\nversion = 1.0\r\n[x]\r\ny = \xc3\xa9"
    node = Node(tmp_path, text)
    node.set("1.1")
    assert node.conf.read_bytes() == text.replace(b"1.0", b"1.1")


def test_values_inside_a_multiline_value_elsewhere_are_not_mistaken(tmp_path):
    text = '[x]\nv = """\n[media]\nversion = 9\n"""\n[media]\nversion = 1.0\n'
    node = Node(tmp_path, text)
    node.set("1.1")
    assert node.conf.read_text() == text.replace("version = 1.0", "version = 1.1")


def test_owner_mode_kept_and_previous_file_backed_up(node):
    if os.geteuid() == 0:
        os.chown(node.conf, 0, 33)  # root:www-data, as Apache reads it
    before_stat, before = node.conf.stat(), node.conf.read_bytes()
    result = node.set("1.1")
    st = node.conf.stat()
    assert (st.st_uid, st.st_gid, st.st_mode) == (
        before_stat.st_uid, before_stat.st_gid, before_stat.st_mode)
    assert st.st_ino != before_stat.st_ino  # replaced by rename, not rewritten in place
    assert result.backup is not None and node.backups() == [result.backup]
    assert result.backup.read_bytes() == before
    # the group kept, but no one but root reads it: it holds a password
    assert result.backup.stat().st_mode & 0o777 == 0o600
    assert result.backup.stat().st_gid == before_stat.st_gid


# ------------------------------------------------------------ unset and force


def test_unset_version_leaves_the_file_alone(tmp_path):
    text = CONF.replace("version = 1.0   # inline comment stays\n", "")
    node = Node(tmp_path, text)
    before = node.conf.stat()
    result = node.set("1.1")
    assert result.action == UNSET
    assert node.conf.read_text() == text
    assert node.conf.stat().st_mtime_ns == before.st_mtime_ns
    assert node.backups() == [] and not node.state.exists()


def test_empty_version_counts_as_unset(tmp_path):
    node = Node(tmp_path, "[media]\nversion =\n")
    assert node.set("1.1").action == UNSET
    assert node.set("1.1", force=True).action == ADDED
    assert node.conf.read_text() == "[media]\nversion = 1.1\n"


def test_force_adds_the_key_to_an_existing_section(tmp_path):
    text = CONF.replace("version = 1.0   # inline comment stays\n", "other = x\n")
    node = Node(tmp_path, text)
    result = node.set("1.1", force=True)
    assert (result.action, result.old, result.new) == (ADDED, None, "1.1")
    assert changed_lines(text.encode(), node.conf.read_bytes()) == ["+ version = 1.1\n"]
    assert node.conf.read_text().index("version = 1.1") > node.conf.read_text().index("other")
    assert node.value() == "1.1"


def test_force_adds_the_section_at_the_end(tmp_path):
    text = "[paths]\n    [[jails]]\n    src = /j"  # nested section last, no newline
    node = Node(tmp_path, text)
    node.set("1.1", force=True)
    assert node.conf.read_text() == text + "\n[media]\nversion = 1.1\n"
    assert ConfigObj(str(node.conf)).dict() == {
        "paths": {"jails": {"src": "/j"}}, "media": {"version": "1.1"}}


# ------------------------------------------------------------ the record


def test_reinstall_of_the_same_version_gets_a_new_value(node):
    assert node.set("2.1", upgrade="1.0->2.1").new == "2.1"
    assert node.set("2.1", upgrade="2.1->2.1 #1").new == "2.1.r2"
    assert node.set("2.1", upgrade="2.1->2.1 #2").new == "2.1.r3"
    record = json.loads((node.state / MEDIA_RECORD).read_text())
    assert [e["value"] for e in record["entries"]] == ["2.1", "2.1.r2", "2.1.r3"]


def test_same_upgrade_twice_is_a_no_op(node):
    first = node.set("2.1", upgrade="1.0->2.1")
    mtime = node.conf.stat().st_mtime_ns
    second = node.set("2.1", upgrade="1.0->2.1")
    assert (second.action, second.new) == (UNCHANGED, first.new)
    assert node.conf.stat().st_mtime_ns == mtime
    assert len(node.backups()) == 1


def test_by_hand_twice_is_a_no_op_unless_reinstall(node):
    assert node.set("2.1").new == "2.1"
    assert node.set("2.1").action == UNCHANGED
    assert node.set("2.1", reinstall=True).new == "2.1.r2"
    assert node.set("2.1").action == UNCHANGED  # the latest value for 2.1 is kept


def test_value_in_use_counts_as_used_even_without_a_record(tmp_path):
    node = Node(tmp_path, "[media]\nversion = 2.1\n")  # set by hand before ivle-maint
    assert node.set("2.1", upgrade="u").new == "2.1.r2"


def test_two_nodes_with_the_same_history_compute_the_same_value(tmp_path):
    a, b = Node(tmp_path / "a"), Node(tmp_path / "b")
    for version, upgrade in [("1.1", "x"), ("1.2", "y"), ("1.2", "z")]:
        assert a.set(version, upgrade=f"a-{upgrade}").new == b.set(version, upgrade=upgrade).new
    assert a.value() == b.value() == "1.2.r2"
    # A node whose record was lost still agrees: the value in use counts as used.
    c = Node(tmp_path / "c", CONF.replace("version = 1.0", "version = 1.2.r2"))
    assert c.set("1.2", upgrade="w").new == a.set("1.2", upgrade="w").new == "1.2.r3"


def test_plan_shows_the_next_value_without_writing(node):
    before = node.conf.read_bytes()
    plan = plan_media_version(node.conf, node.state, "2.1", reinstall=True)
    assert (plan.current, plan.target) == ("1.0", "2.1")
    assert node.conf.read_bytes() == before and not node.state.exists()


def test_unreadable_record_is_a_one_line_error(node):
    node.state.mkdir()
    (node.state / MEDIA_RECORD).write_text("{broken")
    before = node.conf.read_bytes()
    with pytest.raises(MaintError, match="unreadable media version record"):
        node.set("2.1")
    assert node.conf.read_bytes() == before


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[media]\nversion = 1.0\n[paths\nx = 1\n", r"ivle.conf line 3: Invalid line"),
        ("[media]\nversion = 1.0\nversion = 1.1\n", r"ivle.conf line 3: Duplicate keyword"),
        ('[media]\nversion = "1.0\n', r"ivle.conf line 2: "),
        ("[media]\nversion = '''1.0\n2.0'''\n", r"line 2: .*triple-quoted"),
        ("[media]\nversion = 1.0, 1.1\n", r"is a list"),
        ("media = 1.0\n", r"'media' is a value"),
    ],
)
def test_refusals_write_nothing(tmp_path, text, message):
    node = Node(tmp_path, text)
    with pytest.raises(MaintError, match=message) as caught:
        node.set("2.1", force=True)
    assert "\n" not in str(caught.value)
    assert str(node.conf) in str(caught.value)
    assert node.conf.read_text() == text
    assert node.backups() == [] and not node.state.exists()


def test_not_utf8_is_an_error(tmp_path):
    node = Node(tmp_path, b"[media]\nversion = 1.0\n# \xff\n")
    with pytest.raises(MaintError, match="not UTF-8"):
        node.set("2.1")


# ------------------------------------------------------------ crashes


def test_failed_rename_keeps_the_original_and_a_rerun_picks_the_same_value(node, monkeypatch):
    before = node.conf.read_bytes()
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst).name == "ivle.conf":
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    real_exchange = atomic._exchange

    def crash_exchange(first, second):  # the rename that puts it in place, either way
        if Path(second).name == "ivle.conf":
            raise OSError(28, "No space left on device", str(second))
        return real_exchange(first, second)

    monkeypatch.setattr(atomic.os, "replace", crash)
    monkeypatch.setattr(atomic, "_exchange", crash_exchange)
    with pytest.raises(MaintError, match="No space left on device"):
        node.set("2.1", upgrade="1.0->2.1")
    assert node.conf.read_bytes() == before
    assert sorted(p.name for p in node.etc.iterdir()) == ["ivle.conf"]  # no temporary left
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    monkeypatch.setattr(atomic, "_exchange", real_exchange)
    # The value was reserved in the record: the rerun writes that one, as
    # the nodes that did not crash did.
    assert node.set("2.1", upgrade="1.0->2.1").new == "2.1"
    assert node.value() == "2.1"


@pytest.mark.skipif(os.geteuid() != 0, reason="media show needs root (gates/root.py)")
def test_media_show_without_ivle_conf_exits_2(tmp_path, capsys):
    """A missing ivle.conf is bad input (exit 2), as for every other command."""
    from ivle_maint.cli import main

    settings = tmp_path / "maint.conf"
    settings.write_text(f"[paths]\nivle_conf_dir = {tmp_path}/etc\nstate = {tmp_path}/state\n")
    assert main(["--config", str(settings), "media", "show"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ivle-maint: error: {tmp_path}/etc/ivle.conf: no such file "
                   "(set IVLECONF or [paths] ivle_conf_dir)"]


# ------------------------------------------------------------ a damaged record

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ivle_maint.media.version import is_value  # noqa: E402

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20), st.sampled_from(["2.1", "1.0", "2.1.r2",
                                                                "../../etc", "2.1 x"]))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
ENTRY = st.fixed_dictionaries(
    {"value": st.one_of(JSON, st.sampled_from(["2.1", "../../etc", "2.1\n[x]", "2.1 # c"])),
     "version": st.one_of(JSON, st.just("2.1"))},
    optional={"upgrade": st.one_of(JSON, st.just("run-1")), "time": JSON})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.one_of(st.fixed_dictionaries({"entries": st.lists(ENTRY, max_size=3)}), JSON))
def test_whatever_the_record_holds_the_value_is_one_ivle_maint_makes_or_one_line(
        tmp_path_factory: pytest.TempPathFactory, record: object) -> None:
    """The record of media versions (STATE/media-versions.json) damaged or
    edited by hand: an entry whose value is a number (`"value": 2.1`), a
    list, a path, or whose version or upgrade is no string (generated JSON).
    Its one reader (Record.load) takes only entries as ivle-maint writes
    them: the plan and the step give a value ivle-maint makes, or one line
    naming the file, ivle.conf untouched.  Before: a number was a TypeError
    traceback in the preflight and in the media-version step (site down),
    and a recorded `../../etc` went into ivle.conf and IVLE's URLs."""
    node = Node(tmp_path_factory.mktemp("record") / "node")
    node.state.mkdir()
    (node.state / MEDIA_RECORD).write_text(json.dumps(record))
    before = node.conf.read_bytes()
    for act in (lambda: plan_media_version(node.conf, node.state, "2.1",
                                           upgrade="run-1").target,
                lambda: node.set("2.1", upgrade="run-1").new):
        try:
            value = act()
        except MaintError as exc:
            assert "\n" not in str(exc) and MEDIA_RECORD in str(exc), exc
            assert node.conf.read_bytes() == before
            continue
        assert is_value(value), value
