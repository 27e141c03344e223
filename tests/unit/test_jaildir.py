"""The jail mounts directory check, on real directories and given mount tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ivle_maint import cli, jaildir
from ivle_maint.config import IvleConf, load_ivle_conf
from ivle_maint.errors import ConfigError
from ivle_maint.mountinfo import parse_line


def ivle_conf(tmp_path: Path, mounts: str | None = None) -> IvleConf:
    data = tmp_path / "var" / "lib" / "ivle"
    (data / "jails" / "__base__").mkdir(parents=True, exist_ok=True)
    (data / "jailmounts").mkdir(exist_ok=True)
    conf = tmp_path / "etc"
    conf.mkdir(exist_ok=True)
    line = f"mounts = {mounts}\n" if mounts is not None else ""
    (conf / "ivle.conf").write_text(f"[paths]\nprefix = {tmp_path}/usr\ndata = {data}\n"
                                    f"[[jails]]\n{line}")  # fmt: skip
    return load_ivle_conf(conf)


def mount(mount_id: int, point: str, root: str = "/", device: str = "8:1") -> object:
    return parse_line(f"{mount_id} 1 {device} {root} {point} rw,relatime - ext4 /dev/sda1 rw")


def refused(ivle: IvleConf, table: list | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        jaildir.check(ivle, [] if table is None else table)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_status == 2
    assert "[paths][[jails]] mounts" in message and "refusing to stop processes" in message
    return message


def test_the_default_directory_passes(tmp_path: Path):
    ivle = ivle_conf(tmp_path)
    assert jaildir.check(ivle, []) == str(tmp_path / "var/lib/ivle/jailmounts")


@pytest.mark.parametrize(("value", "why"), [
    ('""', "is empty"), ("/", "resolves to /"), ("//", "resolves to /"),
    ("jailmounts", "is not an absolute path"), ("/srv", "system directory /srv"),
    ("/var/lib", "system directory /var/lib"), ("/var/lib/../../usr", "system directory /usr"),
])  # fmt: skip
def test_obviously_unsafe_values(tmp_path: Path, value: str, why: str):
    assert why in refused(ivle_conf(tmp_path, value))


def test_directories_holding_or_inside_ivles_own(tmp_path: Path):
    data = tmp_path / "var/lib/ivle"
    assert "holds IVLE's data directory" in refused(ivle_conf(tmp_path, str(tmp_path)))
    assert "holds IVLE's data directory" in refused(ivle_conf(tmp_path, str(data)))
    assert "lies in IVLE's jails src" in refused(ivle_conf(tmp_path, f"{data}/jails/x"))


def test_a_symlink_may_only_lead_inside_ivles_data(tmp_path: Path):
    data = tmp_path / "var/lib/ivle"
    (tmp_path / "elsewhere").mkdir()
    ivle_conf(tmp_path)
    (data / "out").symlink_to(tmp_path / "elsewhere")
    (data / "in").symlink_to(data / "jailmounts")
    message = refused(ivle_conf(tmp_path, str(data / "out")))
    assert f"is a symlink to {tmp_path}/elsewhere, outside IVLE's data directory" in message
    assert jaildir.check(ivle_conf(tmp_path, str(data / "in")), []) == str(data / "jailmounts")


def test_mounts_below_must_be_users_jails(tmp_path: Path):
    ivle = ivle_conf(tmp_path)
    data = tmp_path / "var/lib/ivle"
    top = f"{data}/jailmounts"
    (data / "jails" / "alice").mkdir()
    template_root = str(data / "jails/__base__")
    base = mount(10, "/")  # the disk holding the whole tree
    alice = [mount(11, f"{top}/alice", template_root), mount(12, f"{top}/alice/home")]
    # A deleted user: no jail source any more, but the template is mounted.
    bob = [mount(13, f"{top}/bob", template_root)]
    assert jaildir.check(ivle, [base, *alice, *bob]) == top
    hostile = [mount(14, f"{top}/a\\040b\\012c", template_root)]
    assert jaildir.check(ivle, [base, *hostile]) == top
    pgdata = mount(15, f"{top}/pgdata", "/", "8:2")
    message = refused(ivle, [base, *alice, pgdata])
    assert f"holds mounts that are not users' jails: {top}/pgdata (ext4 /dev/sda1)" in message
    stray = mount(16, f"{top}/carol/home", "/srv/x")  # no jail root, no jail source
    assert f"{top}/carol/home" in refused(ivle, [base, stray])


def test_control_characters_are_escaped_in_messages(tmp_path: Path):
    message = refused(ivle_conf(tmp_path), [mount(10, "/"), mount(
        11, f"{tmp_path}/var/lib/ivle/jailmounts/x\\012y", "/z", "8:2")])
    assert "x\\ny" in message


def test_an_oserror_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]):
    def read_only(ctx: object) -> int:
        raise OSError(30, os.strerror(30), "/var/backups/ivle-maint/x\ny")

    args = cli.build_parser().parse_args(["settings"])
    monkeypatch.setattr(cli, "build_parser", lambda only=None: _Fixed(args, read_only))
    assert cli.main(["settings"]) == 1
    err = capsys.readouterr().err
    assert err == "ivle-maint: error: /var/backups/ivle-maint/x\\ny: Read-only file system\n"


class _Fixed:
    """A parser that returns the given arguments, bound to func."""

    def __init__(self, args: object, func: object) -> None:
        self.args, self.func = args, func

    def parse_args(self, argv: object) -> object:
        self.args.func = self.func  # type: ignore[attr-defined]
        return self.args
