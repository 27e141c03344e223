"""Restore points on disk: kept files checked by sha256, held dumps kept by
rotation through any number of retries, [rollback]'s limits commit only on
counts and on durations the clocks can tell (a jumped clock commits nothing)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ivle_maint.config import Settings, load_settings
from ivle_maint.db import backup, pins
from ivle_maint.errors import MaintError
from ivle_maint.gates import clock, trusted
from ivle_maint.rollback import point as points


def settings_in(tmp_path: Path, text: str = "") -> Settings:
    path = tmp_path / "maint.conf"
    path.write_text(f"[node]\nrole = master\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"backup = {tmp_path / 'backup'}\n{text}")
    return load_settings(str(path))


def test_a_point_keeps_files_and_finds_them_back_checked(tmp_path):
    settings = settings_in(tmp_path)
    conf = tmp_path / "ivle.conf"
    conf.write_text("[media]\nversion = 1\n")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.keep_file("ivle.conf", conf, trusted.IVLE_CONF)
    conf.write_text("[media]\nversion = 2\n")
    # Kept once: the first copy is the point's.
    point.keep_file("ivle.conf", conf, trusted.IVLE_CONF)
    again = points.for_upgrade(settings, "1.0->1.1@ab")
    assert again is not None and again.kept_file("ivle.conf") == b"[media]\nversion = 1\n"
    (again.directory / "ivle.conf").write_text("tampered\n")
    with pytest.raises(MaintError, match="sha256 differs"):
        again.kept_file("ivle.conf")


def test_only_the_matching_pinned_point_serves_a_rollback(tmp_path):
    settings = settings_in(tmp_path)
    points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    assert points.for_rollback(settings, "1.1", "1.0") is not None
    assert points.for_rollback(settings, "1.2", "1.0") is None
    assert points.for_rollback(settings, "1.0", "1.1") is None


@hsettings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_a_point_directory_name_never_leaves_its_parent(upgrade):
    name = points.slug(upgrade)
    assert "/" not in name and "\0" not in name and not name.startswith(".")
    assert (Path("/x") / name).parent == Path("/x")


def test_a_held_dump_survives_rotation_through_twenty_retries(tmp_path):
    settings = settings_in(tmp_path)
    directory = tmp_path / "backup"
    directory.mkdir()
    first = directory / backup.dump_name(directory, "ivle", "before-a")
    first.write_bytes(b"dump 0")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.record_dump(first)
    for attempt in range(1, 21):  # each retry of a failed upgrade takes a dump
        taken = directory / backup.dump_name(directory, "ivle", f"before-a{attempt}")
        taken.write_bytes(f"dump {attempt}".encode())
        backup.rotate(directory, "ivle", 2, taken=taken)
    assert first.is_file()
    assert point.check_dump() == first
    points.commit(settings, point)
    assert first.name not in pins.protected(directory)


def test_a_changed_dump_is_refused(tmp_path):
    settings = settings_in(tmp_path)
    dump = tmp_path / "backup" / "ivle.dump"
    dump.parent.mkdir()
    dump.write_bytes(b"x")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.record_dump(dump)
    dump.write_bytes(b"y")
    with pytest.raises(MaintError, match="changed since it was taken"):
        point.check_dump()


def _complete(settings: Settings, upgrade: str, old: str, new: str) -> list[str]:
    points.open_point(settings, upgrade, old, new)
    return [p.upgrade for p in points.completed(settings, upgrade, new)]


def test_a_later_upgrade_commits_the_point_by_count(tmp_path):
    settings = settings_in(tmp_path, "[rollback]\ncommit_after_upgrades = 2\n"
                                     "commit_after_days = 0\n")
    assert _complete(settings, "1.0->1.1@a", "1.0", "1.1") == []
    # A reinstall keeps no point (keep.point_of) and counts for none.
    assert points.completed(settings, "1.1->1.1@r", "1.1") == []
    assert _complete(settings, "1.1->1.2@b", "1.1", "1.2") == []
    assert _complete(settings, "1.2->1.3@c", "1.2", "1.3") == ["1.0->1.1@a"]
    assert [p.upgrade for p in points.all_points(settings) if p.pinned] == \
        ["1.1->1.2@b", "1.2->1.3@c"]


def _aged(settings: Settings, upgrade: str, reading: clock.Reading) -> None:
    point = points.for_upgrade(settings, upgrade)
    assert point is not None
    point.completed = asdict(reading)
    point.save()


def test_days_commit_only_when_the_clocks_can_tell(tmp_path):
    settings = settings_in(tmp_path, "[rollback]\ncommit_after_upgrades = 0\n"
                                     "commit_after_days = 1\n")
    _complete(settings, "1.0->1.1@a", "1.0", "1.1")
    now = clock.reading()
    # Completed "tomorrow" by a clock that was ahead: the age is unknown, kept.
    _aged(settings, "1.0->1.1@a", clock.Reading(now.wall + 86400 * 3, None, "other-boot"))
    assert _complete(settings, "1.1->1.2@b", "1.1", "1.2") == []
    # Two days ago, on this boot by the monotonic clock: committed.
    _aged(settings, "1.0->1.1@a", clock.Reading(now.wall - 2 * 86400,
                                                (now.mono or 0) - 2 * 86400, now.boot))
    assert _complete(settings, "1.2->1.3@c", "1.2", "1.3") == ["1.0->1.1@a"]


def test_a_damaged_manifest_is_one_line(tmp_path):
    settings = settings_in(tmp_path)
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.manifest.write_text(json.dumps({"upgrade": 3}))
    with pytest.raises(MaintError, match="unreadable restore point"):
        points.all_points(settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to nobody")
@pytest.mark.parametrize("fault", ["owner", "size"])
def test_a_file_the_gate_refuses_is_one_line_and_nothing_is_kept(tmp_path, fault):
    settings = settings_in(tmp_path)
    conf = tmp_path / "ivle.conf"
    conf.write_text("[media]\nversion = 1\n")
    if fault == "owner":
        os.chown(conf, 65534, 65534)
    else:
        conf.write_bytes(b"#" * (trusted.IVLE_CONF.limit or 0) + b"\n")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    with pytest.raises(MaintError) as refused:
        point.keep_file("ivle.conf", conf, trusted.IVLE_CONF)
    message = str(refused.value)
    assert message.startswith(f"ivle.conf {conf}: ") and "\n" not in message
    assert ("owned by uid 65534, not root" if fault == "owner" else "larger than") in message
    assert {p.name for p in point.directory.iterdir()} - {points.LOCK} == {points.MANIFEST}
    again = points.for_upgrade(settings, "1.0->1.1@ab")
    assert again is not None and again.files == {}


# -- a manifest damaged, from another version or edited: generated ------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["1.0", "1.0 x", "-oAPT::X=1", "/", "../x", "7"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["path", "aside", "inode", "sha256", "original", "wall", "mono",
                         "boot", "x"]), inner, max_size=4),
    max_leaves=6)
_FIELDS = ["upgrade", "old", "new", "role", "sequence", "taken", "package_name", "package",
           "files", "template", "dump", "marker", "classes", "schema", "completed",
           "upgrades_since", "counted", "committed", "rolled_back", "letting_go",
           "failed_database"]


def _full_point(tmp_path: Path, settings: Settings) -> tuple[points.RestorePoint, Path]:
    """A point keeping ivle.conf, a dump and a template aside; and a directory
    outside it that nothing of the point may touch."""
    conf = tmp_path / "ivle.conf"
    conf.write_text("[media]\nversion = 1\n")
    dump = tmp_path / "backup" / "ivle.dump"
    dump.parent.mkdir(exist_ok=True)
    dump.write_bytes(b"dump")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.keep_file("ivle.conf", conf, trusted.IVLE_CONF)
    point.record_dump(dump)
    template = tmp_path / "jails" / "__base__"
    aside = template.with_name(f"__base__.restore-{points.slug(point.upgrade)}")
    aside.mkdir(parents=True)
    template.mkdir()
    point.update(lambda p: setattr(p, "template", {
        "path": str(template), "aside": str(aside), "inode": str(os.lstat(aside).st_ino)}))
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep").write_text("mine\n")
    return point, victim


@hsettings(max_examples=150, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _JSON, min_size=1, max_size=3),
       victim_field=st.sampled_from([None, "aside", "path"]))
def test_a_generated_damaged_manifest_is_one_line_or_a_point_whose_values_are_sound(
        tmp_path_factory, changes, victim_field):
    """Whatever a manifest's fields hold: every use of the point is a
    MaintError of one line or works on sound values; a rollback never runs
    apt with an argument that is no version or package, and letting the
    point go never removes a directory that is not its own template's copy."""
    from ivle_maint import versions
    from ivle_maint.dpkg_calls import PACKAGE_NAME

    tmp_path = tmp_path_factory.mktemp("point")
    settings = settings_in(tmp_path)
    point, victim = _full_point(tmp_path, settings)
    data = json.loads(point.manifest.read_text())
    data.update(changes)
    if victim_field and isinstance(data.get("template"), dict):
        data["template"] = {**data["template"], victim_field: str(victim)}
    point.manifest.write_text(json.dumps(data))

    def used() -> None:
        found = points.all_points(settings)
        points.latest_pinned(settings)
        points.for_rollback(settings, "1.1", "1.0")
        for p in found:
            assert isinstance(p.old, str) and isinstance(p.new, str)
            versions.check(p.old)
            versions.check(p.new)
            assert p.package_name == "" or PACKAGE_NAME.fullmatch(p.package_name)
            p.describe()
            assert isinstance(p.pinned, bool)
            if p.dump is not None:
                p.check_dump()
            if "ivle.conf" in p.files:
                p.kept_file("ivle.conf")
        points.completed(settings, "1.1->1.2@cd", "1.2")
        for p in points.all_points(settings):
            points.commit(settings, p)

    try:
        used()
    except MaintError as exc:
        assert "\n" not in str(exc)
    assert (victim / "keep").read_text() == "mine\n"
