"""Jail unmounts: real bind mounts in pytest's private mount namespace."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint import cli, mountinfo
from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.jails import mounts
from ivle_maint.jails.mounts import BusyMountsError, unmount_jails_for, unmount_jails_in
from ivle_maint.output import RecordingReporter

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

ODD_NAMES = ["with space", "tab\tnew\nline\\back"]


def table_below(path: Path) -> list[str]:
    """Mount points strictly below path, straight from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", "rb") as handle:
        raw = handle.read()
    points = [mountinfo.unescape(line.split(b" ")[4]) for line in raw.splitlines()]
    return sorted(p for p in points if p.startswith(f"{path}/"))


def jail_points(node: Any, login: str) -> set[str]:
    jail = node.jail(login)
    return {str(jail), str(jail / "home"), str(jail / "tmp")}


@pytest.fixture
def mounted(node_factory: Any) -> Any:
    """Three users' jails mounted, no consoles, no services."""
    return node_factory(users=3, services=False, env=True)


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Any]:
    """bind(target) mounts a fresh directory there; undone afterwards."""
    from ivle_sandbox import mountns

    made: list[Path] = []

    def do(target: Path) -> Path:
        source = tmp_path / f"src{len(made)}"
        source.mkdir()
        (source / "marker").write_text(str(target))
        target.mkdir(parents=True, exist_ok=True)
        mountns.require_private(target)
        mountns.bind(source, target)
        made.append(target)
        return target

    yield do
    for target in reversed(made):
        while str(target) in {m.mountpoint for m in mountns.mountinfo()}:
            mountns.umount(target)


def test_every_jail_mount_goes_including_deleted_users_and_odd_names(mounted: Any, bind: Any):
    gone_user = mounted.users[2].login
    mounted.delete_user(gone_user)
    for name in ODD_NAMES:
        bind(mounted.jail_mounts / name)
    # A second mount stacked on a jail, as a double ivle-mountallusers leaves.
    bind(mounted.jail(mounted.users[0].login))
    before = table_below(mounted.jail_mounts)
    assert len(before) == 3 * 3 + 2 + 1
    assert any("\t" in p and "\n" in p and "\\" in p for p in before)

    rep = RecordingReporter()
    result = unmount_jails_in(mounted.jail_mounts, rep)
    assert table_below(mounted.jail_mounts) == []
    assert sorted(result.unmounted) == before
    assert result.busy == () and result.detached == ()
    assert result.summary == f"unmounted {len(before)} jail mounts"
    # The jail directories themselves and the user files are still there.
    assert mounted.jail(gone_user).is_dir()
    assert (mounted.home(gone_user)).is_dir()


def test_mountallusers_first_then_what_it_missed(mounted: Any):
    gone_user = mounted.users[1].login
    mounted.delete_user(gone_user)
    settings = load_settings(str(mounted.maint_conf))
    settings["jails"]["run_mountallusers"] = True
    result = unmount_jails_for(settings, RecordingReporter())
    assert result.mountallusers_status == 0
    # ivle-mountallusers -u unmounted the users in the database; the
    # deleted user's jail was left to us.
    assert set(result.unmounted) == jail_points(mounted, gone_user)
    assert table_below(mounted.jail_mounts) == []


def test_a_failing_mountallusers_is_a_warning_and_the_table_decides(mounted: Any):
    mounted.set_fakes("ivle-mountallusers", fail="yes", exit_code=3)
    rep = RecordingReporter()
    result = unmount_jails_in(mounted.jail_mounts, rep,
                           mountallusers=[str(mounted.commands["ivle-mountallusers"])],
                           env={"IVLECONF": mounted.env["IVLECONF"]})  # fmt: skip
    assert result.mountallusers_status == 3
    assert rep.lines[0].startswith("warning: ") and "-u exited 3" in rep.lines[0]
    assert len(result.unmounted) == 9 and table_below(mounted.jail_mounts) == []


def test_nothing_outside_the_directory_is_touched(mounted: Any, bind: Any, tmp_path: Path):
    sibling = bind(Path(f"{mounted.jail_mounts}2") / "alice")  # common prefix
    outside = bind(mounted.root / "outside" / "m")
    login = mounted.users[0].login
    # Symlinks pointing out: one in a user's home, one in the mounts dir.
    (mounted.home(login) / "escape").symlink_to(outside)
    (mounted.jail_mounts / "evil").symlink_to(outside.parent)
    result = unmount_jails_in(mounted.jail_mounts, RecordingReporter())
    assert len(result.unmounted) == 9
    assert all(mountinfo.is_below(p, mounted.jail_mounts) for p in result.unmounted)
    points = {m.mountpoint for m in mountinfo.read()}
    assert str(sibling) in points and str(outside) in points
    assert (outside / "marker").read_text() == str(outside)


def test_the_configured_directory_may_be_a_symlink(mounted: Any):
    link = mounted.root / "jailmounts-link"
    link.symlink_to(mounted.jail_mounts)
    assert [m.mountpoint for m in mounts.list_jail_mounts(link)] == [
        m.mountpoint for m in mounts.list_jail_mounts(mounted.jail_mounts)
    ]
    result = unmount_jails_in(link, RecordingReporter())
    assert result.top == str(mounted.jail_mounts)
    assert len(result.unmounted) == 9 and table_below(mounted.jail_mounts) == []


def test_bad_directories_are_refused():
    with pytest.raises(MaintError, match="resolves to /"):
        unmount_jails_in("/", RecordingReporter())
    with pytest.raises(MaintError, match="not an absolute path"):
        unmount_jails_in("var/lib/ivle/jailmounts", RecordingReporter())


def test_a_symlink_on_the_way_is_not_followed(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    top = str(tmp_path)
    with pytest.raises(mounts._NotFollowed, match=f"^{top}/link$"):
        mounts._umount_at(f"{top}/link/x", 0)
    # Reached, not a mount point: the kernel's own answer.
    assert mounts._umount_at(f"{top}/real/x", 0) == errno.EINVAL
    assert mounts._umount_at(f"{top}/gone/x", 0) == errno.ENOENT


def test_busy_mounts_are_reported_with_their_holders_and_left(node: Any):
    consoles = sorted(node.console_pids())
    busy_users = [node.users[0].login, node.users[1].login]
    with pytest.raises(BusyMountsError) as caught:
        unmount_jails_in(node.jail_mounts, RecordingReporter())
    result = caught.value.result
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("4 jail mounts still mounted")
    assert all(f"pid {pid} " in message for pid in consoles)
    assert "python-console" in message and "ivle-maint consoles stop" in message
    busy = {b.mountpoint: b for b in result.busy}
    expected = {str(node.jail(u)) for u in busy_users} | {
        str(node.jail(u) / "home") for u in busy_users
    }
    assert set(busy) == expected
    assert {h.pid for h in busy[str(node.jail(busy_users[0]) / "home")].holders} == {
        pid for pid in consoles if f"/{busy_users[0]}/" in os.readlink(f"/proc/{pid}/cwd")
    }
    # Everything else went; the busy ones and their processes are intact.
    assert table_below(node.jail_mounts) == sorted(expected)
    assert sorted(node.console_pids()) == consoles


def test_busy_mounts_are_detached_lazily_when_asked(node: Any):
    consoles = sorted(node.console_pids())
    rep = RecordingReporter()
    result = unmount_jails_in(node.jail_mounts, rep, lazy=True)
    assert table_below(node.jail_mounts) == []
    assert len(result.detached) == 4 and result.busy == ()
    assert {h.pid for d in result.detached for h in d.holders} == set(consoles)
    assert sum("lazily detached busy mount" in line for line in rep.lines) == 4
    assert sorted(node.console_pids()) == consoles  # lazy does not kill
    assert "lazily detached 4 busy ones" in result.summary


def test_a_busy_mount_names_a_non_console_holder(mounted: Any):
    login = mounted.users[0].login
    tmp = mounted.jail(login) / "tmp"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print('ready', flush=True); time.sleep(600)"],
        cwd=tmp, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        with pytest.raises(BusyMountsError) as caught:
            unmount_jails_in(mounted.jail_mounts, RecordingReporter())
        (busy_tmp,) = [b for b in caught.value.result.busy if b.mountpoint == str(tmp)]
        (who,) = busy_tmp.holders
        assert (who.pid, who.user, who.reason, who.path) == (holder.pid, "root", "cwd", str(tmp))
        assert f"pid {holder.pid} (user root, jail {login})" in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_running_twice_is_a_no_op(mounted: Any):
    first = unmount_jails_in(mounted.jail_mounts, RecordingReporter())
    assert len(first.unmounted) == 9
    rep = RecordingReporter()
    second = unmount_jails_in(mounted.jail_mounts, rep)
    assert second.unmounted == () and second.busy == ()
    assert second.summary == "no jail mounts" and rep.lines == []


def test_cli_list_unmount_and_lazy(node: Any, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["mounts", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 15
    first = out[0].split("\t")
    assert first[0] == str(node.jail(node.users[0].login)) and first[1] == "ro"
    assert cli.main(["mounts", "unmount"]) == 1
    err = capsys.readouterr().err
    assert "ivle-maint: error: 4 jail mounts still mounted" in err
    assert err.count("warning: busy, left mounted:") == 4
    assert cli.main(["mounts", "unmount", "--lazy"]) == 0
    assert "lazily detached 4 busy ones" in capsys.readouterr().err
    assert cli.main(["mounts", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_list_escapes_hostile_names(mounted: Any, bind: Any,
                                        capsys: pytest.CaptureFixture[str]):
    """A newline or tab in a mount point cannot split or forge a line of `mounts list`."""
    odd = [*ODD_NAMES, "evil\n/etc\trw\text4\t/"]
    for name in odd:
        bind(mounted.jail_mounts / name)
    assert cli.main(["mounts", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(table_below(mounted.jail_mounts))
    assert all(len(line.split("\t")) == 4 for line in lines)
    points = [mountinfo.unescape(line.split("\t")[0]) for line in lines]
    assert sorted(points) == table_below(mounted.jail_mounts)
    assert f"{mounted.jail_mounts}/tab\\011new\\012line\\134back" in [
        line.split("\t")[0] for line in lines]


def _login_row(node: Any, login: str, add: bool) -> None:
    conn = node.connect()
    try:
        with conn, conn.cursor() as cur:
            if add:
                cur.execute("INSERT INTO login (login, unixid, state, nick, fullname) "
                            "VALUES (%s, 900002, 'enabled', 'x', 'x')", [login])
            else:
                cur.execute("DELETE FROM login WHERE login = %s", [login])
    finally:
        conn.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(up=st.integers(1, 2), spelled=st.sampled_from(["", "./", "a/../", "a/./../"]),
       target=st.sampled_from(["victim", "home", "tmp", ""]))
def test_a_login_that_is_a_path_never_has_mountallusers_unmount_outside(
    mounted: Any, tmp_path: Path, up: int, spelled: str, target: str
):
    """ivle-mountallusers -u umounts MOUNTS/LOGIN/home, MOUNTS/LOGIN/tmp and
    MOUNTS/LOGIN for every login of the database: a login `../victim`
    (or `..`: the data directory, a slave's NFS mount of the master's) would
    unmount what lies outside the jail mounts directory.  Refused in one
    line before the tool runs, every mount outside kept."""
    from ivle_sandbox import mountns

    data = mounted.jail_mounts.parent
    back = "".join(f"{part}/" for part in data.parts[len(data.parts) - up + 1:])
    login = f"{spelled}{'../' * up}{back}{target}".rstrip("/")
    victims = [data / "victim", data / "home", data / "tmp"]
    for victim in victims:
        source = tmp_path / f"{victim.name}-{len(list(tmp_path.iterdir()))}"
        source.mkdir()
        victim.mkdir(exist_ok=True)
        mountns.bind(source, victim)
    _login_row(mounted, login, True)
    try:
        settings_ = load_settings(str(mounted.maint_conf))
        settings_["jails"]["run_mountallusers"] = True
        try:
            unmount_jails_for(settings_, RecordingReporter())
            refused = ""
        except MaintError as exc:
            refused = str(exc)
        points = {m.mountpoint for m in mountinfo.read()}
        assert [str(v) for v in victims if str(v) not in points] == [], login
        assert "\n" not in refused and "the login table holds the login" in refused
    finally:
        _login_row(mounted, login, False)
        for victim in victims:
            while str(victim) in {m.mountpoint for m in mountinfo.read()}:
                mountns.umount(victim)
