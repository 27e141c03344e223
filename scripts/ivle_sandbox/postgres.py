"""A throwaway PostgreSQL server: initdb, start, stop, gone.

    with ThrowawayPostgres(root) as pg:
        conn = pg.connect()                      # superuser over the socket
        conn = pg.connect(user=pg.ivle_user)     # password over 127.0.0.1

As root the cluster belongs to the unprivileged `postgres` user (the
server refuses to run as root), so root's parents must be traversable by
it: make_sandbox_root() gives such a directory.  Durability is switched
off: this server lives for seconds and starts in well under one.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
from psycopg2 import sql

from ivle_sandbox import procs, schema
from ivle_sandbox.mountns import SandboxError
from ivle_sandbox.reaper import Reaper

_SETTINGS = """
# ivle_sandbox: a throwaway server, speed over safety.
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
shared_buffers = 16MB
max_connections = 40
autovacuum = off
logging_collector = off
log_min_messages = warning
# As Debian's postgresql-common sets up every cluster (its snakeoil
# certificate): TCP clients get TLS, libpq's sslmode=prefer takes it.
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
"""

_HBA = """\
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
"""


def pg_bindir() -> Path:
    """The newest PostgreSQL server binaries installed (Debian layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    if not found:
        raise SandboxError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return Path(found[-1]).parent


PORT_BASE, PORT_STRIDE = 10_000, 500  # per unixid slot; below the kernel's ephemeral range
_next_port = 0


def free_port() -> int:
    """A port nobody listens on.  A test process that claimed a unixid slot
    takes it from that slot's range, which no other test process (another
    xdist worker, a second run) uses and the kernel never hands out as an
    ephemeral port: a port picked here is still free when the node binds
    it.  Otherwise the kernel picks one."""
    global _next_port
    slot = schema.claimed_slot
    for _ in range(PORT_STRIDE if slot is not None else 1):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if slot is None:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
                return port
            port = PORT_BASE + slot * PORT_STRIDE + _next_port
            _next_port = (_next_port + 1) % PORT_STRIDE
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SandboxError(f"no free port left in slot {slot}'s range")


def make_sandbox_root(prefix: str = "ivle-sandbox-") -> Path:
    """A fresh directory under /tmp that other users may traverse."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


def _check_traversable(path: Path, uid: int) -> None:
    # The server (and console users) must reach everything below root.
    for parent in [path, *path.parents]:
        mode = parent.stat()
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            raise SandboxError(f"{parent} is not traversable by uid {uid} (chmod o+x)")


class ThrowawayPostgres:
    """A PostgreSQL cluster under root/pgdata, socket in root/pgsock.

    stop() removes what start() made: root itself if it did not exist.
    """

    superuser = "postgres"
    ivle_user = "ivle"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.pgdata = self.root / "pgdata"
        self.socket_dir = self.root / "pgsock"
        self.logfile = self.root / "postgres.log"
        self.bindir = pg_bindir()
        self.ivle_password = secrets.token_hex(12)
        self.port = 0
        self.pid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self.os_uid, self.os_gid = entry.pw_uid, entry.pw_gid
        else:
            self.os_uid, self.os_gid = os.geteuid(), os.getegid()
        self._reaper: Reaper | None = None
        self._created_root = False

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A server program as the cluster's owner, with the sandbox marker."""
        as_other = self.os_uid != os.geteuid()
        return subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            user=self.os_uid if as_other else None,
            group=self.os_gid if as_other else None,
            extra_groups=[] if as_other else None,
            env=procs.sandbox_env(self.root, {"LC_ALL": "C", "HOME": str(self.root)}),
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
        )

    def _checked(self, *argv: str) -> None:
        result = self._run(*argv)
        if result.returncode != 0:
            text = (result.stderr or result.stdout).strip().splitlines()
            raise SandboxError(f"{argv[0]} failed: {text[-1] if text else result.returncode}")

    def start(self) -> None:
        """initdb, configure, start and create the ivle role and database."""
        self._created_root = not self.root.exists()  # then stop() removes it too
        self.root.mkdir(parents=True, exist_ok=True)
        _check_traversable(self.root, self.os_uid)
        # Armed before the first server process exists, disarmed by stop().
        self._reaper = Reaper(self.root, pgdata=self.pgdata, remove=self._owned_paths())
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if len(str(self.socket_dir / ".s.PGSQL.65535")) > 107:  # sun_path limit
            raise SandboxError(f"{self.socket_dir}: too long for a unix socket path")
        for path in (self.pgdata, self.socket_dir):
            path.mkdir(mode=0o700)
            os.chown(path, self.os_uid, self.os_gid)
        self.logfile.touch(mode=0o600)  # pg_ctl opens it as the cluster owner
        os.chown(self.logfile, self.os_uid, self.os_gid)
        self._checked(
            "initdb", "-D", str(self.pgdata), "-U", self.superuser, "-E", "UTF8",
            "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
        )
        (self.pgdata / "pg_hba.conf").write_text(_HBA)
        self._make_certificate()
        for _attempt in range(5):  # the free port may be taken before we bind it
            self.port = free_port()
            self._write_settings()
            result = self._run(
                "pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "30",
                "start",
            )
            if result.returncode == 0:
                break
        else:
            raise SandboxError(f"PostgreSQL did not start; see {self.logfile}")
        self.pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                role = sql.Identifier(self.ivle_user)
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(role), [self.ivle_password]
                )
                cur.execute(sql.SQL("CREATE DATABASE ivle OWNER {}").format(role))
        finally:
            conn.close()

    def _make_certificate(self) -> None:
        """A self-signed certificate, as Debian's ssl-cert makes its snakeoil
        one: an EC key, made in milliseconds."""
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7", "-subj", "/CN=localhost",
             "-keyout", str(self.pgdata / "server.key"), "-out", str(self.pgdata / "server.crt")],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SandboxError(f"openssl req failed: {done.stderr.strip()[-200:]}")
        for name in ("server.key", "server.crt"):
            os.chown(self.pgdata / name, self.os_uid, self.os_gid)
        (self.pgdata / "server.key").chmod(0o600)

    def _write_settings(self) -> None:
        conf = self.pgdata / "postgresql.auto.conf"
        conf.write_text(_SETTINGS.format(port=self.port, socket_dir=self.socket_dir))
        os.chown(conf, self.os_uid, self.os_gid)

    def _owned_paths(self) -> list[Path]:
        if self._created_root:
            return [self.root]
        return [self.pgdata, self.socket_dir, self.logfile]

    def stop(self) -> None:
        """Fast shutdown; verify the postmaster is gone; remove the cluster."""
        atexit.unregister(self.stop)
        if self.pid is not None:
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "20", "stop")
            if procs.wait_gone([self.pid], 10.0):
                procs.kill_all([self.pid])
            if procs.wait_gone([self.pid], 1.0):
                raise SandboxError(f"postmaster {self.pid} survived SIGKILL")
            self.pid = None
        for path in self._owned_paths():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def dsn(self, dbname: str = "ivle", user: str | None = None) -> dict[str, Any]:
        """Connection keywords: the superuser by socket, others by TCP."""
        user = user or self.superuser
        if user == self.superuser:
            return {"host": str(self.socket_dir), "port": self.port, "dbname": dbname, "user": user}
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": user,
            "password": self.ivle_password if user == self.ivle_user else None,
        }

    def connect(self, dbname: str = "ivle", user: str | None = None, **extra: Any) -> Any:
        """A psycopg2 connection (the caller closes it)."""
        return psycopg2.connect(**{**self.dsn(dbname, user), **extra})
