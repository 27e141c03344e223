"""Who may be signalled (gate: ivle_maint/gates/processes.py).

Real processes in real bind-mounted jails (the test run's private mount
namespace), a real node and its real PostgreSQL.  ivle-maint stops a
student's process in a jail whatever it calls itself, however it forks,
in whatever mount namespace; it never signals a process outside the
jails (the database server), nor ivle-maint and its callers; a process
of a user who is not IVLE's (an administrator's shell) in a jail is
named and the step stops before anything is signalled.  The jail
mounts directory that decides all this is checked first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.consoles.jail_processes import stop_consoles_in
from ivle_maint.gates import processes
from ivle_maint.gates.processes import Verdict
from ivle_maint.output import RecordingReporter
from ivle_sandbox import mountns
from ivle_sandbox import procs as sandbox_procs
from ivle_sandbox.procs import alive
from support.abuse_helpers import one_error_line
from support.fuse_daemon import fuse_mount
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    home_checksums,
    journal,
    preinst,
    set_setting,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

SLEEP = "import time; print('ready', flush=True); time.sleep(600)"
SYSTEM_NAMES = ["postgres", "/usr/lib/postgresql/15/bin/postgres",
                "postgres: ivle ivle [local] idle", "postmaster", "ivle-maint", "apache2",
                "/usr/sbin/apache2", "init", "systemd", "sshd: root@pts/0", "python-console",
                "bash", "-bash", "dpkg", "ivle-usrmgt-server", "\x1b[2Jpostgres\nivle-maint: ok"]


def stop_all(node: Any) -> None:
    """Freeze, then kill, every student process the test started, forkers too."""
    students = {int(u.unixid) for u in node.users}
    for _ in range(20):
        pids = [p for p in sandbox_procs.marked(node.root) if _uid(p) in students]
        if not pids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        sandbox_procs.wait_gone(pids, 3.0)


def _uid(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).uids().real)
    except psutil.Error:
        return None


@pytest.fixture
def spawn(node: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a process (our child, marked as the node's) with a given cwd,
    argv0 and user; every one, and what it forked, is killed afterwards.

    The gate spares ivle-maint's own children; called in this process, the
    test's children are the students', so only its callers are spared."""
    started: list[subprocess.Popen[bytes]] = []
    real = processes.protected
    monkeypatch.setattr(processes, "protected", lambda: {
        pid: why for pid, why in real().items() if why != "ivle-maint's own child"})

    def start(cwd: Path | str, *, argv0: str | None = None, user: int | None = None,
              code: str = SLEEP, argv: list[str] | None = None,
              program: str | None = sys.executable) -> subprocess.Popen[bytes]:  # fmt: skip
        """argv: the whole command line, run as program (None: argv[0] from PATH)."""
        args = argv or [argv0 if argv0 is not None else sys.executable, "-c", code]
        proc = subprocess.Popen(args, executable=program,
                                cwd=str(cwd), user=user, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL,
                                env=sandbox_procs.sandbox_env(node.root))  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        started.append(proc)
        return proc

    yield start
    stop_all(node)
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def set_jail_mounts(node: Any, value: str) -> None:
    text = node.ivle_conf.read_text()
    line = re.search(r"^\s*mounts = .*$", text, re.MULTILINE)
    assert line is not None
    node.ivle_conf.write_text(text.replace(line.group(0), f"    mounts = {value}"))


def student(node: Any, index: int) -> tuple[str, int, Path]:
    """(login, unixid, mounted home) of the node's INDEXth user."""
    user = node.users[index]
    return user.login, int(user.unixid), node.jail(user.login) / "home" / user.login


def in_jails(node: Any) -> list[processes.Found]:
    """The gate's verdicts, as ivle-maint would reach them: the test's own
    children are its processes, not ivle-maint's, so nothing is spared."""
    tree = processes.jail_tree(os.path.realpath(node.jail_mounts), src=str(node.jails_src))
    return processes.scan(tree, {})


# -- the jail mounts directory decides what is signalled ----------------------


def _unsafe_dirs(node: Any, tmp_path: Path) -> dict[str, tuple[str, str]]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = node.data / "jailmounts-link"
    link.symlink_to(elsewhere)
    up = node.data / "jailmounts-up"
    up.symlink_to(node.data.parent)
    foreign = node.data / "other-mounts"
    (foreign / "pgdata").mkdir(parents=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    mountns.bind(disk, foreign / "pgdata")
    return {
        "empty": ('""', "is empty"),
        "root": ("/", "resolves to /"),
        "srv": ("/srv", "resolves to the system directory /srv"),
        "ivle tree": (str(node.root), "holds IVLE's data directory"),
        "symlink out": (str(link), f"is a symlink to {elsewhere}, outside IVLE's data directory"),
        "symlink up": (str(up), f"holds IVLE's data directory {node.data}"),
        "foreign mounts": (str(foreign), f"holds mounts that are not users' jails: "
                                         f"{foreign}/pgdata"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["empty", "root", "srv", "ivle tree", "symlink out", "symlink up", "foreign mounts"]
)
def test_preflight_refuses_an_unsafe_jail_mounts_directory_with_the_site_up(
    node_factory: Any, tmp_path: Path, case: str
):
    node = at_version_1_0(node_factory(users=2, consoles=2, env=True))
    value, expected = _unsafe_dirs(node, tmp_path)[case]
    consoles = node.console_pids()
    # A process sitting in the configured directory, and one in IVLE's tree.
    bystanders = [subprocess.Popen([sys.executable, "-c", SLEEP], cwd=str(where),
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
                  for where in (node.data, node.root)]  # fmt: skip
    if case in ("symlink out", "foreign mounts"):
        bystanders.append(subprocess.Popen([sys.executable, "-c", SLEEP],
                                           cwd=str(Path(value).resolve()),
                                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
    try:
        assert all(p.stdout is not None and p.stdout.readline() == b"ready\n"
                   for p in bystanders)  # fmt: skip
        set_jail_mounts(node, value)
        done = preinst(node)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done)
        assert "[paths][[jails]] mounts" in line and expected in line, line
        assert "refusing to stop processes or unmount anything" in line
        assert node.service_running("apache2") and node.service_running("ivle-usrmgt-server")
        assert sorted(node.console_pids()) == sorted(consoles)
        assert all(proc.poll() is None for proc in bystanders)
        assert len(node.mounts()) >= 6  # every user's jail still mounted
        assert not journal(node).get("steps", {}).get("stop-web")
        # The same refusal from the steps run by hand.
        for command in (("consoles", "stop"), ("mounts", "unmount")):
            by_hand = cli(node, *command)
            assert by_hand.returncode == 2 and expected in one_error_line(by_hand)
        assert all(proc.poll() is None for proc in bystanders)
    finally:
        for proc in bystanders:
            proc.kill()
            proc.wait()


# -- never by name: a student's process is stopped whatever it calls itself ---


def test_a_student_process_named_like_the_database_is_stopped_and_the_database_never(
    node: Any, spawn: Any
):
    login, uid, home = student(node, 2)
    consoles = node.console_pids()
    named = [spawn(home, argv0=name, user=uid) for name in SYSTEM_NAMES]
    in_mounts_dir = spawn(node.jail_mounts, user=uid)  # the mounts directory itself: no jail
    pg_before = psutil.Process(node.pg.pid)
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert all(p.wait(timeout=10) == -signal.SIGTERM for p in named)
    assert not any(alive(pid) for pid in consoles)
    assert in_mounts_dir.poll() is None
    # The real PostgreSQL (another uid, outside every jail) is untouched.
    assert alive(node.pg.pid) and psutil.Process(node.pg.pid) == pg_before
    assert node.service_running("ivle-usrmgt-server")
    assert (f"jail {login}: {len(SYSTEM_NAMES)} processes stopped (0 needed SIGKILL)"
            in done.stderr)  # fmt: skip
    assert "database" not in done.stderr and "\x1b" not in done.stderr


NAME_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=40)  # fmt: skip


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.one_of(st.sampled_from(SYSTEM_NAMES), NAME_TEXT), min_size=1,
                      max_size=3))  # fmt: skip
def test_no_name_argv_or_comm_changes_the_verdict(node: Any, spawn: Any, names: list[str]):
    """argv[0], the arguments and comm (prctl) are the student's to choose."""
    login, uid, home = student(node, 3)
    code = ("import ctypes, sys, time\n"
            "ctypes.CDLL(None).prctl(15, sys.argv[1].encode('utf-8', 'surrogateescape')[:15])\n"
            "print('ready', flush=True); time.sleep(600)")  # fmt: skip
    plain = spawn(home, user=uid)
    named = [spawn(home, user=uid, argv=[name, "-c", code, name, *names]) for name in names]
    verdicts = {f.pid: (f.decision.verdict, f.decision.kind, f.decision.jail)
                for f in in_jails(node)}  # fmt: skip
    assert verdicts[plain.pid] == (Verdict.STUDENT, "cwd", login)
    assert all(verdicts[p.pid] == verdicts[plain.pid] for p in named)
    stop_all(node)
    for proc in [plain, *named]:
        proc.wait(timeout=10)


# -- however it forks: the jail ends empty, within a bound -------------------

FORK_ON_TERM = """\
import os, signal, time
def on_term(*_):
    os.fork()  # parent and child both carry on, with this handler
signal.signal(signal.SIGTERM, on_term)
print('ready', flush=True)
while True:
    time.sleep(1)
"""

FORK_CHAIN = """\
import os, resource, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_NPROC, (40, 40))
print('ready', flush=True)
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.02)
"""


@pytest.mark.parametrize("code", [FORK_ON_TERM, FORK_CHAIN], ids=["fork on SIGTERM", "fork chain"])
def test_a_process_that_forks_to_survive_is_stopped_and_the_jail_ends_empty(
    node: Any, spawn: Any, code: str
):
    login, uid, home = student(node, 4)
    forker = spawn(home, user=uid, code=code)
    set_setting(node, "consoles", "term_timeout", 1)
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert forker.wait(timeout=10) in (-signal.SIGKILL, -signal.SIGTERM)
    assert not [p for p in psutil.process_iter(["uids", "status"])
                if p.info["uids"] and p.info["uids"].real == uid
                and p.info["status"] != psutil.STATUS_ZOMBIE]  # the jail is empty, forks and all
    assert node.console_pids() == []
    assert re.search(f"jail {login}: \\d+ process(es)? stopped \\([1-9]\\d* needed SIGKILL\\)",
                     done.stderr), done.stderr  # fmt: skip
    assert len(done.stderr.splitlines()) <= 5


def test_a_console_ignoring_sigterm_is_killed(node: Any, spawn: Any):
    login, uid, _ = student(node, 1)
    stubborn = spawn(node.jail(login) / "home", user=uid,
                     code="import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     + SLEEP)  # fmt: skip
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert f"pid {stubborn.pid})" in done.stderr and "ignored SIGTERM" in done.stderr
    assert f"jail {login}: 2 processes stopped (1 needed SIGKILL)" in done.stderr
    assert "(1 needed SIGKILL)" in done.stderr and node.console_pids() == []


# -- whatever its mount namespace ----------------------------------------------

OWN_NAMESPACE = """\
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
jail, elsewhere, home, uid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
assert libc.unshare(0x00020000) == 0  # CLONE_NEWNS
assert libc.mount(b"none", b"/", None, 0x4000 | (1 << 18), None) == 0  # MS_REC|MS_PRIVATE
assert libc.mount(jail.encode(), elsewhere.encode(), None, 0x1000 | 0x4000, None) == 0
os.chroot(elsewhere)
os.chdir(home)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
print('ready', flush=True)
while True:
    time.sleep(1)
"""


def test_a_student_process_in_its_own_mount_namespace_is_found_by_identity(
    node: Any, spawn: Any, tmp_path: Path
):
    login, uid, _ = student(node, 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = spawn("/", argv=[sys.executable, "-c", OWN_NAMESPACE, str(node.jail(login)),
                            str(elsewhere), f"/home/{login}", str(uid)])  # fmt: skip
    # Its own namespace shows paths outside the jail mounts directory.
    assert os.readlink(f"/proc/{proc.pid}/root") == str(elsewhere)
    assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert f"jail {login}: 1 process stopped (0 needed SIGKILL)" in done.stderr


ESCAPED = """\
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) == 0  # CLONE_NEWUSER | CLONE_NEWNS: no root needed
assert libc.mount(b"none", sys.argv[1].encode(), b"tmpfs", 0, None) == 0
os.chroot(sys.argv[1])
os.chdir("/")
print('ready', flush=True)
while True:
    time.sleep(1)
"""


def test_a_student_process_that_left_the_jail_tree_through_its_own_namespaces_is_stopped(
    node: Any, spawn: Any
):
    """Unprivileged: a user namespace of its own, a tmpfs mounted there, chroot into it."""
    login, uid, home = student(node, 4)
    elsewhere = Path(tempfile.mkdtemp(prefix="ivle-escape-", dir="/tmp"))
    elsewhere.chmod(0o755)  # the student may reach it
    try:
        proc = spawn(home, user=uid, argv=[sys.executable, "-c", ESCAPED, str(elsewhere)])
        assert os.readlink(f"/proc/{proc.pid}/root") == str(elsewhere)  # nothing of the jail
        assert os.readlink(f"/proc/{proc.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        done = cli(node, "consoles", "stop")
        assert done.returncode == 0, done.stderr
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert f"jail {login}: 1 process stopped (0 needed SIGKILL)" in done.stderr
    finally:
        stop_all(node)
        elsewhere.rmdir()


OWN_USER_NAMESPACE = """\
import ctypes, time
assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0  # CLONE_NEWUSER
print('ready', flush=True)
time.sleep(600)
"""


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 4), where=st.sampled_from(["jail", "source"]),
       victim=st.integers(61000, 61999))
def test_a_fuse_mount_on_a_home_is_never_asked_whose_home_it_is(
    node: Any, spawn: Any, index: int, where: str, victim: int
):
    """A student's fusermount over their own home (allow_other, as
    `user_allow_other` in the jail's /etc/fuse.conf permits; without it
    the kernel refuses root's stat), whose daemon says the home is another
    user's (any uid: the kernel passes a FUSE daemon's word on).  Before:
    the gate took that uid for a student's, and stopped that user's process
    in a user namespace of its own, outside every jail (a rootless
    container, a sandboxed service); a daemon that never answered held
    `consoles stop` for ever.  The daemon is never asked anything."""
    login, uid, mounted = student(node, index)
    home = mounted if where == "jail" else node.jails_src / login / "home" / login
    bystander = spawn("/", user=victim, argv=[sys.executable, "-c", OWN_USER_NAMESPACE])
    with fuse_mount(home, uid=victim) as asked:
        tree = processes.jail_tree(os.path.realpath(node.jail_mounts),
                                   src=str(node.jails_src))
        found = processes.scan(tree, {})
    assert asked == [], "the student's filesystem was asked"
    assert victim not in tree.users and tree.users.get(uid) == login
    assert bystander.pid not in [f.pid for f in found]
    assert bystander.poll() is None


# -- an administrator's shell is named, never killed ----------------------------


@pytest.mark.parametrize("who", ["root", "staff"])
def test_an_administrators_shell_in_a_jail_is_named_and_nothing_is_stopped(
    node: Any, spawn: Any, who: str
):
    _, _, home = student(node, 0)
    homes = home_checksums(node)
    consoles = sorted(node.console_pids())
    uid = 0 if who == "root" else psutil.Process(node.pg.pid).uids().real
    shell = spawn(home, user=uid, argv=["bash", "-c", "echo ready; exec sleep 600"],
                  program=None)
    done = cli(node, "consoles", "stop")
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    user = psutil.Process(shell.pid).username()
    assert f"pid {shell.pid} (user {user}): sleep 600 [cwd {home}]" in line, line
    assert "leave the jail" in line and "nothing was stopped" in line
    assert shell.poll() is None and sorted(node.console_pids()) == consoles
    # The unmount leaves its mount (and the consoles') alone; once it has gone, all ends well.
    assert cli(node, "mounts", "unmount").returncode == 1 and shell.poll() is None
    shell.kill()
    shell.wait()
    assert cli(node, "consoles", "stop").returncode == 0
    assert cli(node, "mounts", "unmount").returncode == 0
    assert node.mounts() == [] and home_checksums(node) == homes


def test_consoles_stop_run_from_inside_a_jail_spares_itself_and_its_shell(node: Any) -> None:
    """`cd JAILMOUNTS/LOGIN/home/LOGIN && ivle-maint consoles stop`: the shell
    and ivle-maint are inside a user's jail, and are never signalled."""
    login = node.users[0].login
    consoles = node.console_pids()
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
    script = (f"cd {shlex.quote(str(node.jail(login) / 'home' / login))} && "
              f"{sys.executable} -m ivle_maint consoles stop; echo \"status $?\"")
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout == "status 0\n", done.stderr
    assert "Traceback" not in done.stderr
    assert consoles and node.console_pids() == []


# -- 600 processes: a few lines, the full list in the log ----------------------

CROWD = """\
i=0; while [ $i -lt 587 ]; do sleep 600 & i=$((i+1)); done
i=0; while [ $i -lt 12 ]; do (trap '' TERM; exec sleep 600) & i=$((i+1)); done
echo ready; wait
"""


def test_a_jail_of_600_processes_is_summarised_in_one_line(node: Any, spawn: Any):
    node.stop_consoles()
    login, uid, home = student(node, 3)
    crowd = spawn(home, user=uid, argv=["sh", "-c", CROWD], program=None)
    assert len([p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]) == 600
    set_setting(node, "consoles", "term_timeout", 1)
    done = cli(node, "-v", "consoles", "stop")  # -v: the log, at debug level, on stderr
    assert done.returncode == 0, done.stderr
    crowd.wait(timeout=10)
    said = [line for line in done.stderr.splitlines() if line.startswith("ivle-maint: ")]
    assert said[0].startswith(f"ivle-maint: warning: jail {login}: 12 processes ignored "
                              "SIGTERM for 1s (pid ")  # fmt: skip
    assert said[0].endswith(" and 9 more): sending SIGKILL")
    assert said[1:] == [f"ivle-maint: jail {login}: 600 processes stopped (12 needed SIGKILL)",
                        "ivle-maint: stopped 600 processes (12 needed SIGKILL)"]  # fmt: skip
    logged = re.findall(r" DEBUG (terminated|killed) pid \d+ ", done.stderr)
    assert len(logged) == 600 and logged.count("killed") == 12
    assert not [p for p in psutil.process_iter(["uids", "status"])
                if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_many_jails_are_summarised_in_a_bounded_number_of_lines(node: Any, spawn: Any):
    node.stop_consoles()
    for index in range(len(node.users)):
        _, uid, home = student(node, index)
        spawn(home, user=uid)
    extra = node.add_users(12)
    for user in extra:
        node.mount_user(user.login)
        spawn(node.jail(user.login) / "home" / user.login, user=int(user.unixid))
    rep = RecordingReporter()
    result = stop_consoles_in(node.jail_mounts, rep, share=node.share, src=node.jails_src)
    assert result.count == 17
    assert len(rep.lines) == 11 and rep.lines[-1] == "and 7 more jails: 7 processes stopped " \
        "(0 needed SIGKILL)"


# -- hostile jail names and symlinks -------------------------------------------


def test_hostile_jail_names_and_symlinks_reach_nothing_outside(node: Any, spawn: Any,
                                                               tmp_path: Path):
    # A jail whose name has a newline, a space and a command substitution,
    # mounted as IVLE mounts a jail; symlinks out of the tree, in the
    # mounts directory and in a user's home.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    hostile = "a b\n$(touch pwned)"
    jail = node.jail_mounts / hostile
    jail.mkdir()
    mountns.bind(node.template, jail, readonly=True)
    (node.jail_mounts / "evil").symlink_to(outside)
    login, uid, _ = student(node, 0)
    (node.home(login) / "root").symlink_to("/")
    in_hostile = spawn(jail, user=uid)
    by_symlink = spawn(outside)  # root, outside every jail: never looked at
    homes = home_checksums(node)
    before_outside = [m for m in mountns.mounts_under(Path("/")) if
                      not m.mountpoint.startswith(str(node.root))]  # fmt: skip
    stopped = cli(node, "consoles", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert in_hostile.wait(timeout=10) == -signal.SIGTERM
    assert by_symlink.poll() is None
    done = cli(node, "mounts", "unmount")
    assert done.returncode == 0, done.stderr
    assert node.mounts() == []
    after_outside = [m for m in mountns.mounts_under(Path("/")) if
                     not m.mountpoint.startswith(str(node.root))]  # fmt: skip
    assert after_outside == before_outside
    assert (outside / "keep").read_text() == "keep" and not Path("pwned").exists()
    assert (node.jail_mounts / "evil").is_symlink() and home_checksums(node) == homes


def test_a_process_that_outlives_sigkill_is_named_once_the_bound_has_passed(
    node: Any, spawn: Any, monkeypatch: pytest.MonkeyPatch
):
    """A process stuck in the kernel (state D) ignores even SIGKILL: stand in
    for one by dropping SIGSTOP and SIGKILL on their way; the rounds end
    after the bound with one line naming it."""
    node.stop_consoles()
    login, uid, home = student(node, 2)
    stuck = spawn(home, user=uid,
                  code="import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  + SLEEP)  # fmt: skip
    send = processes._Handle.send

    def dropped(self: Any, sig: int) -> bool:
        return True if sig in (signal.SIGSTOP, signal.SIGKILL) else send(self, sig)

    monkeypatch.setattr(processes._Handle, "send", dropped)
    monkeypatch.setattr(processes, "KILL_WAIT", 0.05)
    tree = processes.jail_tree(os.path.realpath(node.jail_mounts), src=str(node.jails_src))
    with pytest.raises(processes.MaintError) as caught:
        processes.empty_jails(tree, term_timeout=0, bound=0)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("1 process still in the jails after ")
    assert f"pid {stuck.pid} (user {uid}, jail {login})" in message
    assert stuck.poll() is None


def test_a_root_process_working_in_a_jail_as_the_student_is_named_not_killed(
    node: Any, spawn: Any
):
    """Its effective uid is the student's (seteuid), its real uid root's."""
    _, uid, home = student(node, 2)
    worker = spawn(home, code=f"import os; os.seteuid({uid})\n" + SLEEP)
    assert psutil.Process(worker.pid).uids()[:2] == (0, uid)
    done = cli(node, "consoles", "stop")
    assert done.returncode == 1, done.stderr
    assert f"pid {worker.pid} (user root): " in one_error_line(done)
    assert worker.poll() is None and node.console_pids()
    # The same check, for a preflight to make with the site up (from a
    # process the worker is no child of: ivle-maint spares its own).
    check = ("import sys; from ivle_maint.gates import processes as p\n"
             "p.refuse_foreign(p.jail_tree(sys.argv[1], src=sys.argv[2]))")
    refused = subprocess.run([sys.executable, "-c", check, os.path.realpath(node.jail_mounts),
                              str(node.jails_src)], capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert f"MaintError: inside a jail, not an IVLE user's: pid {worker.pid} " in refused.stderr


def test_an_upgrade_meeting_an_administrators_shell_in_a_jail_names_it_with_the_site_up(
    node_factory: Any,
):
    """The preflight refuses it: the web server is never stopped for it."""
    node = at_version_1_0(node_factory(users=3, consoles=1, env=True))
    homes = home_checksums(node)
    _, _, home = student(node, 1)
    events = node.root / "var" / "log" / "services.log"
    before = events.read_text() if events.exists() else ""
    shell = subprocess.Popen(["bash", "-c", "echo ready; exec sleep 600"], cwd=str(home),
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert shell.stdout is not None and shell.stdout.readline() == b"ready\n"
        done = preinst(node)
        assert done.returncode == 1, done.stderr
        after = events.read_text() if events.exists() else ""
        assert after == before, after[len(before):]  # apache2 never stopped, nor restarted
        errors = [line for line in done.stderr.splitlines() if line.startswith("ivle-maint: error")]
        assert len(errors) == 1 and f"pid {shell.pid} (user root): sleep 600 [cwd {home}]" \
            in errors[0] and "leave the jail" in errors[0], done.stderr
        assert shell.poll() is None and home_checksums(node) == homes
        assert len(node.console_pids()) == 1  # nothing stopped
        assert node.service_running("apache2"), done.stderr  # the site is given back
    finally:
        shell.kill()
        shell.wait()


def test_a_student_process_holding_thousands_of_files_costs_no_more_than_its_cwd(
    node: Any, spawn: Any
):
    """Its open files are never read once its cwd puts it in a jail."""
    _, uid, home = student(node, 3)
    hoarder = spawn(home, user=uid, code=(
        "import os, resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))\n"
        "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(min(hard, 20000) - 50)]\n"
        + SLEEP))  # fmt: skip
    assert len(os.listdir(f"/proc/{hoarder.pid}/fd")) > 900
    tree = processes.jail_tree(os.path.realpath(node.jail_mounts), src=str(node.jails_src))
    facts = processes.facts_of(psutil.Process(hoarder.pid), tree)
    assert facts is not None and [kind for kind, _ in facts.places] == ["root", "cwd", "program"]
    assert processes.decide(facts, tree, {}).verdict is Verdict.STUDENT


LEADERLESS = """\
import ctypes, threading, time
def run():
    while open('/proc/self/stat').read().split()[2] != 'Z':  # until the first thread has ended
        time.sleep(0.01)
    print('ready', flush=True)
    while True:
        time.sleep(1)
threading.Thread(target=run).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)  # the first thread ends: a zombie to ps
"""


def test_a_student_process_whose_first_thread_ended_is_still_found_and_stopped(
    node: Any, spawn: Any
):
    """ps shows it as a zombie, /proc/PID/cwd is gone; its other thread runs on in the jail."""
    login, uid, home = student(node, 2)
    proc = spawn(home, user=uid, code=LEADERLESS)
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(f"/proc/{proc.pid}/cwd")
    done = cli(node, "consoles", "stop")
    assert done.returncode == 0, done.stderr
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert f"jail {login}: 1 process stopped (0 needed SIGKILL)" in done.stderr


def test_a_web_server_serving_a_students_file_passes_the_preflight_a_shell_does_not(
    node: Any, spawn: Any
):
    """With the site up, Apache opens students' files to serve them: an
    open file is no reason to refuse the upgrade then; a working directory
    in a jail (an administrator's shell) is.  Once the web server is down,
    the stop step counts every fact."""
    _, _, home = student(node, 1)
    serving = spawn("/", code=f"import os; fd = os.open({str(home)!r}, os.O_RDONLY)\n" + SLEEP)
    check = ("import sys; from ivle_maint.gates import processes as p\n"
             "p.refuse_foreign(p.jail_tree(sys.argv[1], src=sys.argv[2]), "
             "site_up=sys.argv[3] == 'up')")

    def refused(when: str) -> str:
        done = subprocess.run([sys.executable, "-c", check, os.path.realpath(node.jail_mounts),
                               str(node.jails_src), when], capture_output=True, text=True,
                              check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=120)
        return done.stderr

    assert refused("up") == ""
    assert f"pid {serving.pid} (user root)" in refused("down")
    shell = spawn(home, argv=["bash", "-c", "echo ready; exec sleep 600"], program=None)
    assert f"pid {shell.pid} (user root): sleep 600 [cwd {home}]" in refused("up")


NAMED = """\
import ctypes, os, sys, time
name = bytes.fromhex(sys.argv[1])
ctypes.CDLL(None).prctl(15, name, 0, 0, 0)
if os.fork() == 0:
    ctypes.CDLL(None).prctl(15, name, 0, 0, 0)
else:
    print('ready', flush=True)
time.sleep(600)
"""


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.just(b"apache2"), st.just(b"apa\xffche2"),
                      st.binary(min_size=1, max_size=15).filter(lambda b: b"\0" not in b)))
def test_apache_children_are_known_by_their_program_never_by_a_name(
    node: Any, spawn: Any, name: bytes
):
    """The maintenance page's graceful reload waits for Apache's old children:
    a student's pair of processes named `apache2` (or a name that is no
    UTF-8) is none of them, and never breaks the step."""
    from ivle_maint.services import maintenance_page

    _, uid, home = student(node, 0)
    parent = spawn(home, user=uid, argv=[sys.executable, "-c", NAMED, name.hex()])
    pids = {pid for pid, _ in maintenance_page._children()}
    assert parent.pid not in pids
    assert not pids & {c.pid for c in psutil.Process(parent.pid).children()}
