"""The sandbox itself: PostgreSQL, the node, the IVLE stand-ins, cleanup.

These tests keep the test tooling honest: if the sandbox drifts from the
facts in DESIGN.md, every other integration test loses its meaning.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from ivle_sandbox import mountns, procs, schema
from ivle_sandbox.jailtree import user_files
from ivle_sandbox.node import console_owner, install_version
from ivle_sandbox.postgres import ThrowawayPostgres

pytestmark = [pytest.mark.needs_postgres, pytest.mark.once]
needs_root = pytest.mark.needs_root

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo-node"


def mount_table(pid: int | str = "self") -> dict[str, mountns.Mount]:
    return {m.mountpoint: m for m in mountns.mountinfo(pid)}


# -- PostgreSQL -----------------------------------------------------------


def test_postgres_roles_and_auth(postgres):
    assert procs.alive(postgres.pid)
    with postgres.connect("ivle", postgres.ivle_user) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, inet_server_addr()::text")
        assert cur.fetchone() == ("ivle", "127.0.0.1/32")
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        postgres.connect("ivle", postgres.ivle_user, password="wrong")
    conn = postgres.connect("postgres")  # superuser over the socket
    with conn.cursor() as cur:
        cur.execute("SELECT datdba::regrole::text FROM pg_database WHERE datname = 'ivle'")
        assert cur.fetchone() == ("ivle",)
        cur.execute("SHOW fsync")
        assert cur.fetchone() == ("off",)
    conn.close()


def test_postgres_stop_leaves_nothing(sandbox_dir):
    root = sandbox_dir / "pg-stop"
    started = time.monotonic()
    with ThrowawayPostgres(root) as pg:
        pid = pg.pid
        assert procs.alive(pid)
        assert (pg.socket_dir / f".s.PGSQL.{pg.port}").exists()
    assert time.monotonic() - started < 10
    assert not procs.alive(pid)
    assert not [p for p in procs.all_pids() if str(root) in " ".join(procs.cmdline(p))]
    assert not root.exists()  # start() made it, stop() removed it
    pg.stop()  # twice is harmless


def test_database_from_template(postgres):
    started = time.monotonic()
    users = schema.create_database(postgres, "ivle_tmpl_test", 200)
    assert time.monotonic() - started < 2
    assert users[0] == schema.User("user0001", schema.FIRST_UNIXID + 1) and len(users) == 200
    conn = postgres.connect("ivle_tmpl_test", postgres.ivle_user)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT unixid) FROM login")
            assert cur.fetchone() == (200, 200)
            cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'login'")
            assert cur.fetchone() == ("ivle",)
            cur.execute("SELECT count(*) FROM enrolment")
            assert cur.fetchone() == (200,)
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute(
                    "INSERT INTO login (login, unixid, state, nick, fullname)"
                    " VALUES ('x', 1, 'bogus', 'x', 'x')"
                )
    finally:
        conn.close()
        schema.drop_database(postgres, "ivle_tmpl_test")


# -- the node's files ------------------------------------------------------


@needs_root
def test_configs_read_by_ivle_maint(node):
    from ivle_maint.config import load_ivle_conf, load_settings

    conf = load_ivle_conf(node.conf_dir)
    assert conf.jail_mounts == node.jail_mounts
    assert conf.jail_template == node.template
    assert conf.share == node.share
    assert conf.media_version == "1.0"
    assert conf.database["port"] == node.pg.port and conf.database["name"] == node.dbname
    text = node.ivle_conf.read_text()
    assert text.startswith("# IVLE configuration") and "    # the user management" in text
    assert "${data}/jailmounts" in text
    settings = load_settings(str(node.maint_conf))
    assert settings.role == "both"
    assert settings.ivle_conf_dir == node.conf_dir
    assert settings.path_of("migrations") == node.migrations
    assert all(Path(settings["commands"][k]).is_file() for k in ("buildjail", "remakeuser"))
    assert settings["services"]["initd_dir"] == str(node.initd)
    assert all(str(p).startswith(str(node.root)) for p in (settings.path_of("state"),
               settings.path_of("log"), settings.path_of("backup"), settings.path_of("run")))


@needs_root
def test_media_version_unset_and_install_version(node_factory):
    node = node_factory(users=1, mount=False, services=False, media_version=None)
    assert "[media]" not in node.ivle_conf.read_text()
    install_version(node, "1.1", {"20240101-01.sql": "BEGIN;\nSELECT 1;\nCOMMIT;\n"})
    assert node.installed_version() == "1.1" and node.template_version() == "1.0"
    assert sorted(p.name for p in node.migrations.iterdir()) == ["20240101-01.sql", "README"]


@needs_root
def test_user_files(node):
    for user in node.users:
        home = node.home(user.login)
        for name, data in user_files(user.login).items():
            path = home / name
            assert path.read_bytes() == data
            assert path.stat().st_uid == user.unixid
            # and the same file through the mounted jail
            assert (node.jail(user.login) / "home" / user.login / name).read_bytes() == data
    assert (node.home("user0001") / "my program.py").exists()
    assert (node.jails_src / "user0001" / "tmp").stat().st_mode & 0o7777 == 0o1777


# -- mounts ----------------------------------------------------------------


@needs_root
def test_jail_mounts_present(node):
    table = mount_table()
    for user in node.users:
        jail = node.jail(user.login)
        root_mount = table[str(jail)]
        assert root_mount.readonly
        assert root_mount.root.endswith("/jails/__base__")
        for sub in ("home", "tmp"):
            sub_mount = table[str(jail / sub)]
            assert not sub_mount.readonly
            assert sub_mount.root.endswith(f"/jails/{user.login}/{sub}")
            assert sub_mount.parent_id == root_mount.mount_id
    assert len(node.mounts()) == 3 * len(node.users)
    # nothing of ours in the host's (PID 1's) table
    assert not mountns.mounts_under(node.root, 1)


@needs_root
def test_template_read_only_in_jail(node):
    jail = node.jail("user0002")
    with pytest.raises(OSError) as caught:
        (jail / "usr" / "lib" / "ivle" / "hacked").write_text("x")
    assert caught.value.errno == errno.EROFS
    (jail / "home" / "user0002" / "new.txt").write_text("written in the jail\n")
    assert (node.home("user0002") / "new.txt").read_text() == "written in the jail\n"


@needs_root
def test_refuses_to_mount_outside_private_namespace(sandbox_dir):
    # PID 1 of a fresh PID namespace shares its own mount namespace with
    # "PID 1": the guard must refuse there, and refuse a shared mount.
    code = f"""
import os, subprocess, sys
sys.path[:0] = [{str(REPO / 'scripts')!r}, {str(REPO)!r}]
from pathlib import Path
from ivle_sandbox import mountns
os.environ.pop(mountns.NS_ENV, None)
print(mountns.namespace_problem())
mountns.enter_private_namespace()
print(mountns.namespace_problem())
d = Path({str(sandbox_dir)!r}) / "shared"
d.mkdir()
subprocess.run(["mount", "-t", "tmpfs", "none", str(d)], check=True)
subprocess.run(["mount", "--make-shared", str(d)], check=True)
print(mountns.namespace_problem(d / "x"))
"""
    env = {k: v for k, v in os.environ.items() if k != mountns.NS_ENV}
    out = subprocess.run(
        ["unshare", "-m", "-p", "-f", "--mount-proc", sys.executable, "-c", code],
        capture_output=True, text=True, env=env, check=True, timeout=30,
    ).stdout.splitlines()
    assert "shares PID 1's mount namespace" in out[0]
    assert out[1] == "None"
    assert "is shared" in out[2]
    (sandbox_dir / "shared").rmdir()


# -- consoles --------------------------------------------------------------


@needs_root
def test_consoles_look_like_ivle(node):
    pids = node.console_pids()
    assert len(pids) == 2
    for pid, user in zip(sorted(pids), node.users[:2], strict=True):
        argv = procs.cmdline(pid)
        assert argv[:2] == ["/usr/bin/python", str(node.share / "services" / "python-console")]
        assert len(argv) == 4 and argv[2].isdigit()
        uid, cwd, _root = console_owner(pid)
        assert uid == user.unixid
        assert cwd == str(node.jail(user.login) / "home" / user.login)
        with socket.create_connection(("127.0.0.1", int(argv[2])), timeout=5) as conn:
            conn.sendall(argv[3].encode() + b"\n")
            assert conn.recv(16) == b"ok\n"


@needs_root
def test_chrooted_console(node):
    login = node.users[3].login
    (pid,) = node.start_consoles(logins=[login], chroot=True)
    deadline = time.monotonic() + 5
    while console_owner(pid)[0] != node.users[3].unixid and time.monotonic() < deadline:
        time.sleep(0.02)
    uid, cwd, root = console_owner(pid)
    assert (uid, root) == (node.users[3].unixid, str(node.jail(login)))
    assert cwd == str(node.jail(login) / "home" / login)
    assert pid in node.console_pids()
    node.stop_consoles()
    assert node.console_pids() == []


# -- services --------------------------------------------------------------


@needs_root
def test_services_lsb_behaviour(node):
    for name in ("apache2", "ivle-usrmgt-server"):
        assert node.service_running(name)
    port = node.web_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: conn.recv(4096), b""))
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"apache2\n")
    assert node.service("apache2", "stop").returncode == 0
    assert node.service("apache2", "status").returncode == 3
    assert node.service("apache2", "stop").returncode == 0  # stopped: no-op
    assert node.service("apache2", "start").returncode == 0
    assert node.service("apache2", "start").returncode == 0  # running: no-op
    assert node.service("ivle-usrmgt-server", "restart").returncode == 0
    events = [(s, e) for _t, s, e in node.service_events()]
    assert events == [
        ("apache2", "start"), ("ivle-usrmgt-server", "start"),
        ("apache2", "stop"), ("apache2", "start"),
        ("ivle-usrmgt-server", "stop"), ("ivle-usrmgt-server", "start"),
    ]
    stamps = [t for t, _s, _e in node.service_events()]
    assert stamps == sorted(stamps) and stamps[0].endswith("Z")


@needs_root
def test_service_failure_injection_and_non_root(node):
    node.set_fakes("apache2", fail=["stop"], exit_code=7)
    result = node.service("apache2", "stop")
    assert result.returncode == 7 and "injected" in result.stderr
    assert node.service_running("apache2")
    assert node.service_events("apache2")[-1][2] == "stop FAILED"
    node.set_fakes("apache2", fail=None)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    run = subprocess.run([*as_nobody, str(node.initd / "apache2"), "stop"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 4 and node.service_running("apache2")
    run = subprocess.run([*as_nobody, str(node.initd / "apache2"), "status"], check=False)
    assert run.returncode == 0


# -- the IVLE stand-ins ----------------------------------------------------


@needs_root
@pytest.mark.parametrize(
    "program,args",
    [("ivle-mountallusers", ["-u"]), ("ivle-buildjail", ["-u"]), ("ivle-remakeuser", ["-a"])],
)
def test_fakes_refuse_non_root(node, program, args):
    before = mount_table()
    result = node.run_fake(program, *args, user="nobody")
    assert result.returncode == 1
    assert "must be run as root" in result.stderr
    assert mount_table().keys() == before.keys()


@needs_root
def test_mountallusers_makes_the_same_layout(node):
    def layout():
        return sorted((m.mountpoint, m.root, m.readonly) for m in node.mounts())

    built = layout()
    node.stop_consoles()
    assert node.unmount_all() == []
    assert node.mounts() == []
    result = node.run_fake("ivle-mountallusers")
    assert result.returncode == 0, result.stderr
    assert layout() == built
    assert node.run_fake("ivle-mountallusers").returncode == 0  # mounted: skipped
    assert layout() == built


@needs_root
def test_mountallusers_u_leaves_busy_and_deleted_users(node):
    busy = node.users[0].login  # a console runs in it
    deleted = node.users[2].login
    node.delete_user(deleted)
    result = node.run_fake("ivle-mountallusers", "-u")
    assert result.returncode == 0
    assert "busy" in result.stderr
    left = {m.mountpoint for m in node.mounts()}
    assert str(node.jail(busy)) in left and str(node.jail(busy) / "home") in left
    assert {str(node.jail(deleted)), str(node.jail(deleted) / "home"),
            str(node.jail(deleted) / "tmp")} <= left
    for user in node.users[3:]:
        assert not any(m.startswith(str(node.jail(user.login))) for m in left)


@needs_root
def test_mountallusers_injected_failure_and_delay(node):
    node.set_fakes("ivle-mountallusers", fail=True, exit_code=5, delay=0.3)
    started = time.monotonic()
    result = node.run_fake("ivle-mountallusers", "-u")
    assert result.returncode == 5 and time.monotonic() - started >= 0.3
    assert len(node.mounts()) == 15


@needs_root
def test_remakeuser_failures_and_preserved_homes(node):
    node.set_fakes("ivle-remakeuser", fail_users=[node.users[4].login])
    node.run_fake("ivle-mountallusers", "-u")  # user0001 stays mounted: busy
    stray = node.jails_src / "user0003" / "stray"
    stray.write_text("old structure")
    result = node.run_fake("ivle-remakeuser", "-a")
    assert result.returncode == 0
    failed = sorted(line.split()[5].rstrip(":") for line in result.stderr.splitlines()
                    if line.startswith("Failed to recreate jail for"))
    assert failed == ["user0001", "user0002", "user0005"]  # two busy, one injected
    assert not stray.exists()
    for user in node.users:
        for name, data in user_files(user.login).items():
            assert (node.home(user.login) / name).read_bytes() == data
    jail_conf = node.jails_src / "user0003" / "home" / ".ivle" / "jail.conf"
    assert "version = 1.0" in jail_conf.read_text()
    assert not (node.jails_src / "user0001" / "home" / ".ivle").exists()


def test_fresh_template_is_an_exact_copy_of_template_build(node):
    # What a completed ivle-buildjail leaves; the jail step checks it.
    def tree(top):
        return {str(p.relative_to(top)): (p.lstat().st_mode, p.lstat().st_mtime_ns,
                                          p.read_bytes() if p.is_file() else None)
                for p in top.rglob("*") if not p.is_dir()}

    assert tree(node.template) == tree(node.template_build)
    assert len(tree(node.template)) > 3


@needs_root
@pytest.mark.parametrize("args", [["-u"], []], ids=["update", "rebuild"])
def test_buildjail_copies_new_version(node, args):
    (node.template / "stale-file").write_text("removed by rsync --delete")
    install_version(node, "1.1")
    assert node.template_version() == "1.0"
    result = node.run_fake("ivle-buildjail", *args)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) > 50
    assert node.template_version() == "1.1"
    assert not (node.template / "stale-file").exists()
    jail_lib = node.jail("user0003") / "usr" / "lib" / "ivle"
    assert (jail_lib / "VERSION").read_text() == "1.1\n"  # seen through the mount
    assert '"1.1"' in (jail_lib / "ivle" / "__init__.py").read_text()
    assert (node.template / "bin" / "sh").exists() and (node.template / "home").is_dir()


@needs_root
def test_buildjail_injected_failure(node):
    install_version(node, "2.0")
    node.set_fakes("ivle-buildjail", fail=True)
    result = node.run_fake("ivle-buildjail", "-u")
    assert result.returncode == 100
    assert result.stderr.startswith("E: ")
    assert node.template_version() == "1.0"
    assert (node.template_build / "usr" / "lib" / "ivle" / "VERSION").read_text() == "1.0\n"


@needs_root
def test_teardown_leaves_nothing(node_factory):
    node = node_factory(users=3, consoles=3)
    # Two services (a main process and its worker each), three consoles; as
    # Apache's children, a worker is forked after its init script returned.
    deadline = time.monotonic() + 10
    while len(marked := procs.marked(node.root)) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(marked) == 7
    node.teardown()
    assert not node.root.exists()
    assert procs.wait_gone(marked, 1) == []
    assert not mountns.mounts_under(node.root)
    assert node.dbname not in {u for u in _databases(node.pg)}


def _databases(pg) -> list[str]:
    conn = pg.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


# -- the node in its own namespaces dies with them -------------------------


def _postmaster(pgdata: Path) -> int:
    """The host pid of the postmaster serving pgdata."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in procs.all_pids():
            argv = procs.cmdline(pid)
            if "-D" in argv and argv[argv.index("-D") + 1] == str(pgdata):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no postmaster for {pgdata}")


@needs_root
@pytest.mark.parametrize("ending", ["teardown", "exit", "sigkill", "sigkill-no-pidns"])
def test_node_in_child_namespace_leaves_nothing(sandbox_dir, ending):
    """A child builds a node (PostgreSQL, mounts, services, consoles) in its
    own `unshare -m` namespace and then ends: by tearing down, by exiting
    without cleanup, or by SIGKILL.

    Design: the child also gets its own PID namespace (unshare -p -f
    --kill-child), so when it dies the kernel kills every process it
    started, the postmaster included, and the mount namespace goes with
    them.  Without a PID namespace ("sigkill-no-pidns") the reapers (one
    per server and per node, waiting on a pipe from the child) clean up.
    """
    root = sandbox_dir / f"child-{ending}"
    isolate = ["unshare", "-m", "--propagation", "private"]
    if ending != "sigkill-no-pidns":
        isolate += ["-p", "-i", "-f", "--kill-child", "--mount-proc"]
    child = subprocess.Popen(
        [*isolate, sys.executable, str(DEMO), "--root", str(root), "--users", "3",
         "--consoles", "2", "--json", "--hold"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        info = json.loads(child.stdout.readline())
        postmaster = _postmaster(Path(info["pgdata"]))
        # Two services (main process and worker each), two consoles; a
        # worker is forked after its init script returned, as Apache's.
        deadline = time.monotonic() + 10
        while len(marked := procs.marked(root / "node")) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(marked) == 6
        inner = [p for p in procs.all_pids() if procs.cmdline(p)[1:2] == [str(DEMO)]]
        assert inner, "the demo-node process"
        assert len(mountns.mounts_under(root, inner[0])) == 9  # the child sees its mounts
        assert not mountns.mounts_under(root) and not mountns.mounts_under(root, 1)
        if ending == "teardown":
            child.stdin.close()
            assert child.wait(30) == 0
        elif ending == "exit":
            child.stdin.write("crash\n")
            child.stdin.close()
            assert child.wait(30) == 3
        else:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
        assert procs.wait_gone([postmaster, *marked, *inner], 15) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not mountns.mounts_under(root)
    assert not mountns.mounts_under(root, 1)
    if ending in ("teardown", "sigkill-no-pidns"):
        owned = [root / "node", root / "pg" / "pgdata", root / "pg" / "pgsock"]
        deadline = time.monotonic() + 10  # the reapers may still be removing
        while any(p.exists() for p in owned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in owned if p.exists()]
    mountns.remove_tree(root)
