"""PostgreSQL's client programs (pg_dump, pg_restore) as ivle-maint runs them.

One identity for both, the one connect.py connects as: with [database]
connect_as = postgres and ivle-maint running as root, the program runs as
that system user (Debian's peer authentication checks the process's uid);
otherwise as ivle-maint's own user, with ivle.conf's password.  The
password reaches the program as PGPASSWORD in its own environment, never
argv and never a file (db/backup.py says why).  The environment is the
gate's (gates/environment.py: no inherited PG*, no password file); the
program runs from /, in a session of its own, and dies with ivle-maint
(children.preexec_for_child).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Any

from .. import children
from ..errors import MaintError
from ..gates import environment
from ..system import which
from .connect import ConnectParams, reason


@dataclass(frozen=True)
class Identity:
    """Who a client program runs as: None for ivle-maint's own uid and gid."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None
    home: str


def identity(params: ConnectParams) -> Identity:
    """connect_as's system user when root, else our own (connect.effective_user)."""
    if params.os_user and os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(params.os_user)
        except KeyError:
            raise MaintError(f"no system user {params.os_user!r} to connect as") from None
        return Identity(entry.pw_uid, entry.pw_gid, [], entry.pw_dir)
    return Identity(None, None, None, environment.home_of(os.geteuid()))


def program(name: str, hint: str) -> str:
    """The client program's path; a MaintError naming the package (and HINT)."""
    found = which(name)
    if found is None:
        raise MaintError(f"{name} not found (install postgresql-client{hint})")
    return found


# Every pg_restore ivle-maint runs or prints connects as IVLE's own database
# login (ivle.conf), never as a superuser, and makes every object that
# login's (--no-owner).  Restoring rows calls what the database's users
# wrote (a CHECK, a domain's check, a generated column): as a superuser,
# it ran with the superuser's rights, and SET SESSION AUTHORIZATION or SET
# ROLE to the owner (pg_restore --use-set-session-authorization, --role)
# does not hold it: the function says SET SESSION AUTHORIZATION DEFAULT.
RESTORE_OPTIONS = ("--exit-on-error", "--no-owner")


def restore_argv(program: str, fill_as: ConnectParams, dbname: str) -> list[str]:
    """pg_restore's argv into DBNAME (the archive is the caller's to add),
    connecting as FILL_AS: ivle.conf's login, the new database's owner."""
    return [program, *connection_argv(fill_as), *RESTORE_OPTIONS,
            f"--dbname={dbname_conninfo(dbname)}"]


def connection_argv(params: ConnectParams) -> list[str]:
    """Where and as whom: the options every client program takes alike."""
    argv = [f"--port={params.port}"]
    if params.host:
        argv.append(f"--host={params.host}")
    if params.user:
        argv.append(f"--username={params.user}")
    return argv


def dbname_conninfo(name: str) -> str:
    """NAME for --dbname as a connection string: libpq takes a --dbname that
    holds '=' (or starts postgresql://) for one, so a name is always quoted."""
    quoted = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{quoted}'"


def run_kwargs(params: ConnectParams) -> dict[str, Any]:
    """subprocess's keyword arguments for a client program: identity,
    environment, working directory, own session, parent-death signal."""
    who = identity(params)
    pass_env = {"PGPASSWORD": params.password} if params.password else {}
    # The gate's environment: no inherited PG* (PGOPTIONS, PGSERVICE...).
    env = environment.child_env(
        os.environ, {**pass_env, "PGPASSFILE": environment.NO_PASSFILE,
                     environment.MARK: children.new_mark()}, home=who.home)
    return {
        "env": env,
        "cwd": "/",
        "user": who.user,
        "group": who.group,
        "extra_groups": who.extra_groups,
        # Dies with ivle-maint (children.py): nothing writes on beside a rerun.
        "start_new_session": True,
        "preexec_fn": children.preexec_for_child(),
    }


def failure(stderr: bytes, returncode: int, params: ConnectParams) -> str:
    """The program's last line of stderr as one line, password scrubbed."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return reason(Exception("\n".join(lines)), params) if lines else f"status {returncode}"
