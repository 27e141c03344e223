"""ivle-remakeuser -a on a sandbox node: homes survive, per-user failures are caught."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cli import main
from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.gates import waits
from ivle_maint.jails import template
from ivle_maint.jails.users import (
    PROGRESS_LABEL,
    UserJailsError,
    batches,
    process_count,
    remake_user_jails,
)
from ivle_maint.output import RecordingReporter
from ivle_sandbox.node import install_version
from ivle_sandbox.procs import alive
from support.threads import threads_back_to

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def master(node_factory):
    """Six users whose jails are not mounted (as after the unmount step)."""
    node = node_factory(users=6, role="master", mount=False, services=False)
    install_version(node, "1.1")
    return node


def settings_of(node, **commands):
    settings = load_settings(str(node.maint_conf))
    settings.conf["commands"].update(commands)
    return settings


def homes_fingerprint(node) -> dict[str, tuple[str, int, int, int]]:
    """sha256, uid, gid and mode of every file and directory under every home."""
    found = {}
    for user in node.users:
        home = node.home(user.login)
        for path in [home, *sorted(home.rglob("*"))]:
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path)] = (digest, st.st_uid, st.st_gid, st.st_mode)
    return found


def jail_version(node, login: str) -> str:
    text = (node.jails_src / login / "home" / ".ivle" / "jail.conf").read_text()
    return next(line.split(" = ")[1] for line in text.splitlines() if line.startswith("version"))


def test_every_user_rebuilt_and_every_home_file_kept(master):
    # Files a student might have: hidden, nested, binary, an empty one.
    extra = master.home("user0001") / ".config" / "empty"
    extra.parent.mkdir()
    extra.touch()
    before = homes_fingerprint(master)
    assert len(before) >= 6 * 8
    result = remake_user_jails(settings_of(master), RecordingReporter())
    assert homes_fingerprint(master) == before
    assert (result.total, result.rebuilt, result.failed) == (6, 6, ())
    assert result.total_from == "database"
    assert result.unchanged == ()
    assert json.loads(json.dumps(result.metrics))["rebuilt"] == 6  # the journal stores it
    assert all(jail_version(master, u.login) == "1.1" for u in master.users)


def test_injected_failures_are_reported_by_login_although_the_tool_exits_0(master):
    master.set_fakes("ivle-remakeuser", fail_users=["user0002", "user0005"])
    before = homes_fingerprint(master)
    with pytest.raises(UserJailsError) as caught:
        remake_user_jails(settings_of(master), RecordingReporter())
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert "jails of 2 of 6 users were not rebuilt (the tool exited 0 all the same)" in message
    assert "user0002 ([Errno 5] injected failure (fakes.conf))" in message and "user0005" in message
    assert "user0001" not in message
    assert error.result.run.exit_code == 0
    assert [f.login for f in error.result.failed] == ["user0002", "user0005"]
    assert error.result.rebuilt == 4
    # The others were rebuilt all the same, and nobody lost a file.
    assert jail_version(master, "user0003") == "1.1"
    assert homes_fingerprint(master) == before


def test_a_mounted_jail_is_a_real_failure(master):
    master.mount_user("user0004")
    try:
        with pytest.raises(UserJailsError, match=r"user0004 \(\[Errno 16\] jail is mounted"):
            remake_user_jails(settings_of(master), RecordingReporter())
    finally:
        master.unmount_all()


def test_progress_counts_users_done_of_the_database_total(master):
    master.set_fakes("ivle-remakeuser", delay_per_user=0.25)
    reporter = RecordingReporter()
    remake_user_jails(settings_of(master), reporter, interval=0.05)
    calls = [(done, total) for label, done, total in reporter.progress_calls]
    assert {label for label, _, _ in reporter.progress_calls} == {PROGRESS_LABEL}
    assert {total for _, total in calls} == {6}
    done = [d for d, _ in calls]
    assert done == sorted(done)  # never goes backwards
    assert len(set(done[:-1])) >= 4  # users seen finishing one by one
    assert done[-1] == 6


def test_total_is_what_the_tool_walks_not_the_jail_directories(master):
    master.delete_user("user0006")  # its jail directory stays behind
    stale = master.jails_src / "user0006"
    stamp = stale.stat().st_mtime_ns
    reporter = RecordingReporter()
    result = remake_user_jails(settings_of(master), reporter)
    assert (result.total, result.rebuilt) == (5, 5)
    assert stale.stat().st_mtime_ns == stamp
    assert not any(line.startswith("warning") for line in reporter.lines)


def test_a_user_without_home_afterwards_is_a_failure(master, tmp_path):
    # A tool that exits 0, says nothing, and loses a home.
    broken = tmp_path / "broken"
    broken.write_text(f"#!/bin/sh\nrm -rf {master.jails_src}/user0003/home\n")
    broken.chmod(0o755)
    with pytest.raises(UserJailsError, match=r"1 of 6 users .*: user0003 \(no .*user0003/home/"
                       r"user0003 afterwards\)"):
        remake_user_jails(settings_of(master, remakeuser=str(broken)), RecordingReporter())


def test_users_showing_no_change_are_warned_about(master, tmp_path):
    idle = tmp_path / "idle"
    idle.write_text("#!/bin/sh\nexit 0\n")
    idle.chmod(0o755)
    reporter = RecordingReporter()
    result = remake_user_jails(settings_of(master, remakeuser=str(idle)), reporter)
    assert result.unchanged == tuple(u.login for u in master.users)
    assert "warning: jail of user0001 shows no change after" in reporter.lines[0]


def test_nonzero_exit_is_a_failure_with_the_tail(master, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho 'cannot connect to the database' >&2\nexit 3\n")
    bad.chmod(0o755)
    with pytest.raises(MaintError, match=r"bad LOGIN... failed with status 3; last output: cannot "
                       r"connect to the database"):
        remake_user_jails(settings_of(master, remakeuser=str(bad)), RecordingReporter())


def test_refuses_unless_root(master, monkeypatch):
    monkeypatch.setattr(template.os, "geteuid", lambda: 33)
    stamp = (master.jails_src / "user0001").stat().st_mtime_ns
    with pytest.raises(MaintError, match="must run as root"):
        remake_user_jails(settings_of(master), RecordingReporter())
    assert (master.jails_src / "user0001").stat().st_mtime_ns == stamp


def test_unreachable_database_falls_back_to_jail_directories_for_the_count(master):
    settings = settings_of(master)
    # ivle-maint's own connection goes nowhere; the tool reads ivle.conf
    # itself and still works, so only where the count comes from changes.
    settings.conf["database"].update({"connect_as": "postgres", "socket_dir": "/nonexistent",
                                      "wait_timeout": 0})
    reporter = RecordingReporter()
    result = remake_user_jails(settings, reporter)
    assert result.total_from == "jail directories"
    assert result.total == 6
    assert any("counting jail directories" in line for line in reporter.lines)


def test_cli_jails_remake_users(node_factory, capsys):
    node = node_factory(users=3, role="master", mount=False, services=False, env=True)
    node.set_fakes("ivle-remakeuser", fail_users="user0003")
    assert main(["jails", "remake-users"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "user0003" in lines[0]
    node.set_fakes("ivle-remakeuser", fail_users=None)
    assert main(["jails", "remake-users"]) == 0
    assert "3 of 3 user jails rebuilt" in capsys.readouterr().err
    assert os.path.isdir(Path(node.home("user0003")))


# -- several processes at once (issue 25) --------------------------------------


def barrier_tool(tmp_path: Path, real: str, then: str = 'exec "$REAL" "$@"') -> Path:
    """A stand-in that waits until THREE processes of it run, then THEN: run
    one after the other, the first would never see the others (its guard
    then fails it: a hang, never a measure of speed)."""
    seen = tmp_path / "seen"
    seen.mkdir()
    tool = tmp_path / "barrier"
    tool.write_text(f"""#!/bin/sh
REAL={real}
echo "$@" > {seen}/$$
tries=0
while [ "$(ls {seen} | wc -l)" -lt 3 ]; do
    tries=$((tries + 1))
    if [ $tries -gt 6000 ]; then echo "Failed to recreate jail for $1: ran alone" >&2; exit 0; fi
    sleep 0.02
done
{then}
""")
    tool.chmod(0o755)
    return tool


def started(tmp_path: Path) -> dict[int, list[str]]:
    return {int(p.name): p.read_text().split() for p in (tmp_path / "seen").iterdir()}


def test_batches_split_the_users_evenly_and_in_order():
    logins = [f"u{n:02}" for n in range(10)]
    parts = batches(logins, 3)
    assert parts == [["u00", "u03", "u06", "u09"], ["u01", "u04", "u07"], ["u02", "u05", "u08"]]
    assert batches(logins[:2], 3) == [["u00"], ["u01"]]
    assert process_count(15) == 1  # too few users for a second process
    assert process_count(6, wanted=3) == 3
    assert process_count(2, wanted=3) == 2


def test_batches_run_at_once_and_every_batchs_failures_are_reported(master, tmp_path):
    master.set_fakes("ivle-remakeuser", fail_users=["user0002", "user0003", "user0004"])
    settings = settings_of(master)
    tool = barrier_tool(tmp_path, settings["commands"]["remakeuser"])
    before = homes_fingerprint(master)
    with pytest.raises(UserJailsError) as caught:
        remake_user_jails(settings_of(master, remakeuser=str(tool)), RecordingReporter(),
                          processes=3)
    result = caught.value.result
    # Three processes, each naming its own users: every user once.
    argvs = sorted(started(tmp_path).values())
    assert argvs == [["user0001", "user0004"], ["user0002", "user0005"],
                     ["user0003", "user0006"]]
    assert sorted(f.login for f in result.failed) == ["user0002", "user0003", "user0004"]
    assert (result.total, result.rebuilt, result.processes) == (6, 3, 3)
    assert "jails of 3 of 6 users were not rebuilt" in str(caught.value)
    assert homes_fingerprint(master) == before
    assert all(jail_version(master, login) == "1.1"
               for login in ("user0001", "user0005", "user0006"))


def test_batches_progress_reaches_the_total_and_never_goes_back(master):
    master.set_fakes("ivle-remakeuser", delay_per_user=0.1)
    reporter = RecordingReporter()
    result = remake_user_jails(settings_of(master), reporter, interval=0.05, processes=2)
    assert (result.rebuilt, result.processes) == (6, 2)
    done = [d for _, d, total in reporter.progress_calls if total == 6]
    assert done == sorted(done) and done[-1] == 6
    assert result.run.lines == 0  # the fake says nothing for a user that works


def test_a_failing_batch_fails_the_run_with_its_status(master, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text('#!/bin/sh\ncase "$1" in user0002) echo "no database" >&2; exit 3;; esac\n'
                   f'exec {settings_of(master)["commands"]["remakeuser"]} "$@"\n')
    bad.chmod(0o755)
    with pytest.raises(MaintError, match=r"bad LOGIN... failed with status 3; last output: "
                                         r"no database"):
        remake_user_jails(settings_of(master, remakeuser=str(bad)), RecordingReporter(),
                          processes=2)


def test_ctrl_c_during_batches_ends_every_process_and_thread(master, tmp_path):
    tool = barrier_tool(tmp_path, settings_of(master)["commands"]["remakeuser"],
                        then="exec sleep 300")
    threads = threading.active_count()

    def interrupt_once_all_run() -> None:
        while len(list((tmp_path / "seen").iterdir())) < 3:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt_once_all_run)
    with waits.signals(), pytest.raises(KeyboardInterrupt):
        sender.start()
        remake_user_jails(settings_of(master, remakeuser=str(tool)), RecordingReporter(),
                          processes=3)
    sender.join()
    assert threads_back_to(threads) == []  # no worker left
    pids = started(tmp_path)
    assert len(pids) == 3
    assert not [pid for pid in pids if alive(pid)]



# A login in the database is outside input: as an argument it must never
# be read as an option ('-a', '--help'), and as a jail directory it must
# stay one name below [[jails]] src ('..', 'a/../x', 300 bytes, a newline).
HOSTILE_LOGINS = st.one_of(
    st.sampled_from(["-a", "--all", "-h", "--help", "--", "-", "..", ".", "../x", "a/b",
                     "x" * 300, "bob\nFailed to recreate jail for user0001", ""]),
    st.builds(lambda head, tail: head + tail, st.sampled_from(["-", "../", "", "a/"]),
              st.text("ab-./\n", min_size=1, max_size=6)),
)


def _add_login(node, login: str, unixid: int) -> None:
    conn = node.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO login (login, unixid, state, nick, fullname) "
                        "VALUES (%s, %s, 'enabled', 'x', 'x')", [login, unixid])
    finally:
        conn.close()


def _drop_login(node, login: str) -> None:
    conn = node.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM login WHERE login = %s", [login])
    finally:
        conn.close()


def _built_version(node, login: str) -> str | None:
    built = node.jails_src / login / "home" / ".ivle" / "jail.conf"
    return jail_version(node, login) if built.exists() else None


def _data_listing(node) -> set[str]:
    """Every name in the data directory but what a user's own jail holds."""
    return {str(p.relative_to(node.data)) for p in node.data.rglob("*")
            if not any(p.is_relative_to(node.jails_src / u.login) for u in node.users)}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(login=HOSTILE_LOGINS, processes=st.sampled_from([1, 2]))
def test_a_hostile_login_in_the_database_is_refused_or_rebuilt_as_a_name(master, login,
                                                                          processes):
    """Every user's jail is rebuilt exactly as asked, or nothing runs and one
    line says why; no login reaches the tool as an option or a path."""
    version = f"1.{secrets.randbelow(10**6)}"
    install_version(master, version)
    listing, homes = _data_listing(master), homes_fingerprint(master)
    _add_login(master, login, 900000)
    try:
        try:
            remake_user_jails(settings_of(master), RecordingReporter(), processes=processes)
        except MaintError as exc:
            assert "\n" not in str(exc)
            assert all(_built_version(master, u.login) != version for u in master.users)
        else:
            assert all(_built_version(master, u.login) == version for u in master.users)
        assert homes_fingerprint(master) == homes
        made = _data_listing(master) - listing
        assert all(Path(p).parts[:2] == ("jails", login) for p in made), made
    finally:
        _drop_login(master, login)


def _tree_fingerprint(top: Path) -> dict[str, tuple[str, int]]:
    """Every entry of a tree: its content's sha256 (or its kind) and mode."""
    found = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        digest = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                  and not path.is_symlink() else "link" if path.is_symlink() else "dir")
        found[str(path.relative_to(top))] = (digest, st.st_mode)
    return found


# A login that names a directory of IVLE's own below [[jails]] src: the
# template or its build directory, by name or through a symlink in src.
IVLE_OWN = st.tuples(st.sampled_from(["template", "template_build"]),
                     st.one_of(st.none(), st.text("abcxyz_", min_size=1, max_size=8)))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(own=IVLE_OWN, processes=st.sampled_from([1, 2]), from_db=st.booleans())
def test_a_login_naming_the_jail_template_is_refused_and_the_template_kept(master, own,
                                                                          processes, from_db):
    """A login `__base__` (or a symlink's name in src leading to the
    template) would have ivle-remakeuser empty the template every jail is
    made from: refused in one line before any program runs, both trees
    and every home kept.  Counted from the database or, when that cannot
    be read, from the jail directories."""
    which, alias = own
    target = getattr(master, which)
    login = target.name
    link = None
    if alias is not None:
        link = master.jails_src / f"{alias}{secrets.randbelow(10**6)}"
        link.symlink_to(target.name)
        login = link.name
    version = f"1.{secrets.randbelow(10**6)}"
    install_version(master, version)
    before = {t: _tree_fingerprint(getattr(master, t)) for t in ("template", "template_build")}
    homes = homes_fingerprint(master)
    if from_db:
        _add_login(master, login, 900000)
    settings = settings_of(master)
    if not from_db:  # the database cannot be read: the jail directories are counted
        if link is None:
            return  # a template's own name is never counted from the directories
        settings.conf["database"].update({"connect_as": "postgres",
                                          "socket_dir": "/nonexistent", "wait_timeout": 0})
    try:
        with pytest.raises(MaintError) as raised:
            remake_user_jails(settings, RecordingReporter(), processes=processes)
        assert "\n" not in str(raised.value) and f"'{login}'" in str(raised.value)
        assert all(_built_version(master, u.login) != version for u in master.users)
        assert {t: _tree_fingerprint(getattr(master, t))
                for t in ("template", "template_build")} == before
        assert homes_fingerprint(master) == homes
    finally:
        if from_db:
            _drop_login(master, login)
        if link is not None:
            link.unlink()


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 5), sep=st.sampled_from([" ", ":", "  ", ": "]),
       tail=st.text("abcxyz0123", min_size=1, max_size=6), processes=st.sampled_from([1, 2]))
def test_a_failed_login_is_never_reported_as_another_users(master, index, sep, tail,
                                                           processes):
    """The tool says `Failed to recreate jail for LOGIN: WHY`: a login in the
    database holding a space or a colon after another user's login (`user0001
    x`), whose rebuild fails, must not be told as that other user's failure.
    Refused before anything runs, or the failure names exactly the login."""
    other = master.users[index].login
    login = f"{other}{sep}{tail}"
    _add_login(master, login, 900000)
    master.set_fakes("ivle-remakeuser", fail_users=[login])
    try:
        with pytest.raises(MaintError) as caught:
            remake_user_jails(settings_of(master), RecordingReporter(), processes=processes)
        failed = [f.login for f in getattr(caught.value, "result", None).failed] \
            if isinstance(caught.value, UserJailsError) else []
        assert other not in failed, str(caught.value)
        assert failed in ([], [login]), failed
    finally:
        master.set_fakes("ivle-remakeuser", fail_users=None)
        _drop_login(master, login)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(login=st.sampled_from(["__base__", "__base_build__", "../x", "..", "a/../../x"]),
       when=st.sampled_from(["unreadable by ivle-maint", "added after the read"]),
       processes=st.sampled_from([1, 2]))
def test_the_tool_never_walks_the_login_table_past_the_gate(master, monkeypatch, login, when,
                                                           processes):
    """A hostile login the gate never saw: the table could not be read by
    ivle-maint (it counts the jail directories), or the row came just after
    ivle-maint read it.  Before: `ivle-remakeuser -a` read the table itself
    and emptied the template (`__base__`) or made jails outside src (`..`).
    Now the tool gets only the logins the gate passed."""
    from ivle_maint.jails import users

    before = {t: _tree_fingerprint(getattr(master, t)) for t in ("template", "template_build")}
    listing, homes = _data_listing(master), homes_fingerprint(master)
    settings = settings_of(master)
    if when == "unreadable by ivle-maint":
        _add_login(master, login, 900000)
        settings.conf["database"].update({"connect_as": "postgres",
                                          "socket_dir": "/nonexistent", "wait_timeout": 0})
    else:
        read = users.database_logins

        def then_added(*args, **kwargs):
            found = read(*args, **kwargs)
            _add_login(master, login, 900000)
            return found

        monkeypatch.setattr(users, "database_logins", then_added)
    try:
        try:
            remake_user_jails(settings, RecordingReporter(), processes=processes)
        except MaintError as exc:
            assert "\n" not in str(exc)
        assert {t: _tree_fingerprint(getattr(master, t))
                for t in ("template", "template_build")} == before
        assert homes_fingerprint(master) == homes
        assert _data_listing(master) - listing == set()
    finally:
        monkeypatch.undo()
        _drop_login(master, login)
