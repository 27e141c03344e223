"""pg_dump before migrations, like dbconfig-common before package upgrades.

Dumps are pg_dump's custom format, named
``DBNAME-YYYYMMDDTHHMMSS.ffffffZ-LABEL.dump`` (UTC, so names sort by time),
root's and mode 0600 in a 0700 directory: they hold every password hash.
A dump is written under a hidden ``.partial`` name and renamed when
pg_dump succeeds, so rotation never counts, and nobody restores, half a
dump.  The password reaches pg_dump through a 0600 PGPASSFILE, never argv.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .. import children
from ..errors import MaintError
from ..system import which
from .connect import ConnectParams, reason

log = logging.getLogger(__name__)

SUFFIX = ".dump"


def _pattern(dbname: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(dbname)}-\d{{8}}T\d{{6}}\.\d{{6}}Z(-[\w.-]+)?{SUFFIX}$")


def backups(directory: Path, dbname: str) -> list[Path]:
    """This database's finished dumps, oldest first."""
    if not directory.is_dir():
        return []
    pattern = _pattern(dbname)
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))


def rotate(directory: Path, dbname: str, keep: int) -> list[Path]:
    """Delete all but the newest keep dumps; return the deleted ones."""
    old = backups(directory, dbname)[: -keep or None] if keep > 0 else []
    for path in old:
        path.unlink()
    return old


def restore_command(params: ConnectParams, path: Path) -> str:
    """The command that puts the database back as it was in the dump."""
    base = f"pg_restore --clean --if-exists --single-transaction --dbname={params.dbname} {path}"
    if params.os_user:
        return f"sudo -u {params.os_user} {base}"
    where = f"--host={params.host} --port={params.port} --username={params.user}"
    return base.replace(" --dbname", f" {where} --dbname")


@contextlib.contextmanager
def _passfile(password: str | None) -> Iterator[dict[str, str]]:
    """Environment for libpq programs: a 0600 PGPASSFILE holding password."""
    if not password:
        yield {}
        return
    fd, name = tempfile.mkstemp(prefix="ivle-maint-pgpass-")  # 0600 by construction
    try:
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"*:*:*:*:{escaped}\n")
        yield {"PGPASSFILE": name}
    finally:
        os.unlink(name)


def _pg_dump_argv(params: ConnectParams) -> list[str]:
    program = which("pg_dump")
    if program is None:
        raise MaintError(
            "pg_dump not found (install postgresql-client, or [database] backup = false)"
        )
    argv = [program, "--format=custom", "--no-password", f"--dbname={params.dbname}"]
    argv += [f"--port={params.port}"]
    if params.host:
        argv.append(f"--host={params.host}")
    if params.user:
        argv.append(f"--username={params.user}")
    return argv


def dump(params: ConnectParams, directory: Path, *, label: str, keep: int) -> Path:
    """pg_dump the database into directory, rotate, return the dump's path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    safe_label = re.sub(r"[^\w.-]+", "_", label)
    final = directory / f"{params.dbname}-{stamp}-{safe_label}{SUFFIX}"
    partial = directory / f".{final.name}.partial"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    if params.os_user and os.geteuid() == 0:
        entry = pwd.getpwnam(params.os_user)
        user, group, extra_groups = entry.pw_uid, entry.pw_gid, []
        env["HOME"] = entry.pw_dir
    # Opened here, by root, so the dump is root's whoever pg_dump runs as.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with _passfile(params.password) as pass_env:
            # subprocess, not system.run: stdout must go straight to the file,
            # and pg_dump may have to run as the postgres user.
            done = subprocess.run(
                _pg_dump_argv(params),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.PIPE,
                env={**env, **pass_env, "LC_ALL": "C"},
                cwd="/",
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
                # Dies with ivle-maint (children.py): no pg_dump writing on
                # beside a rerun's.  It has no children of its own to record.
                start_new_session=True,
                preexec_fn=children.preexec_for_child(),
            )
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        last = reason(Exception("\n".join(lines)), params) if lines else f"status {done.returncode}"
        raise MaintError(f"pg_dump of database {params.dbname} failed: {last}")
    partial.rename(final)
    for path in rotate(directory, params.dbname, keep):
        log.info("removed old backup %s", path)
    return final
