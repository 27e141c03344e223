"""pg_dump before migrations, like dbconfig-common before package upgrades.

Dumps are pg_dump's custom format, named
``DBNAME-YYYYMMDDTHHMMSS.ffffffZ-LABEL.nNNNNNN.dump``: the UTC time is for
people, the number (gates.clock) is the order they were taken in, which
rotation goes by: a clock that was ahead, then set right, never makes the
dump just taken look like the oldest one.  Dumps
root's and mode 0600 in a root-owned 0700 directory (safepaths): they hold
every password hash.  A dump is written under a hidden ``.partial`` name,
flocked while pg_dump writes it, and renamed when pg_dump succeeds, so
rotation never counts, and nobody restores, half a dump; the next dump
removes partial ones no process still writes (a killed run's).  Rotation
keeps the dumps that restore an upgrade's starting point (db.pins).

The password reaches pg_dump as PGPASSWORD in pg_dump's own environment,
never argv and never a file: a file would outlive a SIGKILL, while on
Linux a process's environment (/proc/PID/environ) is readable only by its
owner, root here, and goes with the process.  (Earlier versions left
``ivle-maint-pgpass-*`` files in /tmp when killed; the next dump removes
them.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path

from ..errors import MaintError
from ..gates import clock, environment, text, trusted
from ..gates.rewrite import fsync_dir
from ..safepaths import safe_dir
from . import client
from .connect import ConnectParams
from .pins import protected

log = logging.getLogger(__name__)

SUFFIX = ".dump"
OLD_PASSFILE_PREFIX = "ivle-maint-pgpass-"


def _pattern(dbname: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(dbname)}-\d{{8}}T\d{{6}}\.\d{{6}}Z(-[\w.-]+?)?"
                      rf"(\.n\d+)?{SUFFIX}$")


def backups(directory: Path, dbname: str) -> list[Path]:
    """This database's finished dumps, oldest first by the order they were
    taken in (dumps of versions before that order was recorded first)."""
    if not directory.is_dir():
        return []
    pattern = _pattern(dbname)
    # Only files: a directory or a link named like a dump would take a
    # real dump's place among those rotation keeps.
    return clock.oldest_first((p for p in directory.iterdir() if pattern.match(p.name)
                               and stat.S_ISREG(p.lstat().st_mode)), lambda p: p.name)


def dump_name(directory: Path, dbname: str, label: str) -> str:
    """The next dump's name: UTC time for people, sequence number for order."""
    stamp = clock.utc_stamp("%Y%m%dT%H%M%S.%fZ")
    safe_label = re.sub(r"[^\w.-]+", "_", label)
    taken = (p.name.removesuffix(".partial") for p in directory.iterdir())
    tag = clock.sequence_tag(clock.next_sequence(taken))
    return f"{dbname}-{stamp}-{safe_label}{tag}{SUFFIX}"


def rotate(directory: Path, dbname: str, keep: int, *, taken: Path | None = None) -> list[Path]:
    """Delete all but the newest keep dumps, never a pinned one nor TAKEN
    (the dump just taken); return the deleted."""
    try:
        pinned = protected(directory)
    except MaintError as exc:  # cannot tell which to keep: delete nothing
        log.warning("%s; no old backup removed", exc)
        return []
    old = backups(directory, dbname)[: -keep or None] if keep > 0 else []
    old = [path for path in old if path.name not in pinned and path != taken]
    removed = []
    for path in old:
        try:  # one dump that will not go (immutable, say) never fails the upgrade
            path.unlink()
        except OSError as exc:
            log.warning("%s: old backup left as it is (%s)", path, exc.strerror or exc)
            continue
        removed.append(path)
    return removed


def remove_stale_partials(directory: Path) -> list[Path]:
    """Partial dumps no process writes any more (a killed run's): removed.

    pg_dump's stdout shares the flock taken on the partial file, so a dump
    still being written (even by a pg_dump that outlived its ivle-maint)
    stays.
    """
    removed = []
    for path in directory.glob(".*.dump.partial"):
        try:  # the gate's open: never a FIFO (it would block), never a link
            fd = trusted.open_checked(path, trusted.DUMP)
        except (OSError, trusted.Refused) as exc:
            log.warning("%s: left alone (%s)", path, exc)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def remove_old_passfiles() -> list[Path]:
    """Password files that earlier versions left in the temporary directory."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{OLD_PASSFILE_PREFIX}*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                path.unlink()
                removed.append(path)
    return removed


def restore_command(params: ConnectParams, path: Path, *, owner: str | None = None,
                    fill_as: ConnectParams | None) -> str:
    """How a person puts the database back as it was in the dump PATH.

    Never pg_restore --clean over the live database: it cannot drop a table
    one of IVLE's functions depends on, and a restore that fails half-way
    leaves half a database.  Instead, as rollback/database.py does: the
    dump restored into a new, empty database (owned by OWNER), then, with
    nothing connected, the two names swapped in one transaction (the
    replaced database kept).  PARAMS: who may create and rename databases
    ([rollback] connect_as); FILL_AS: who restores into the new database,
    ivle.conf's login, never a superuser (client.restore_argv); None when
    ivle.conf cannot be read: PARAMS.
    Shell-quoted: a backup directory may hold a space or a "$(...)".
    """
    live = params.dbname
    restored, replaced = f"{live}_restored", f"{live}_replaced"

    def command(program: str, *args: str) -> str:
        return as_user(params, [program, *client.connection_argv(params), *args])

    def as_user(who: ConnectParams, argv: list[str]) -> str:
        return text.command(*(["sudo", "-u", who.os_user, *argv] if who.os_user else argv))

    create = command("createdb", "--template=template0",
                     *([f"--owner={owner}"] if owner else []), restored)
    # Read by the shell (root), not by the database's user: the dump is root's 0600.
    fill_as = fill_as or params
    fill = as_user(fill_as, client.restore_argv("pg_restore", fill_as, restored)) + " < " + \
        text.shell_word(path)
    swap = command("psql", "--dbname=postgres", "--set=ON_ERROR_STOP=1", "--command="
                   f"ALTER DATABASE {_ident(live)} RENAME TO {_ident(replaced)}; "
                   f"ALTER DATABASE {_ident(restored)} RENAME TO {_ident(live)}")
    return (f"{create} && {fill}, then with IVLE's web server and user management server "
            f"stopped: {swap}")


def _ident(name: str) -> str:
    """NAME as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _pg_dump_argv(params: ConnectParams) -> list[str]:
    program = client.program("pg_dump", ", or [database] backup = false")
    argv = [program, "--format=custom", "--no-password", f"--dbname={params.dbname}"]
    if params.lock_wait:  # a table another session holds locked: bounded (gates/waits)
        argv.append(f"--lock-wait-timeout={environment.milliseconds(params.lock_wait)}")
    return argv + client.connection_argv(params)


def remove_leftovers(directory: Path) -> list[Path]:
    """What killed runs left: partial dumps, old password files; logged."""
    removed = remove_old_passfiles()
    if directory.is_dir():
        removed += remove_stale_partials(directory)
    for path in removed:
        log.info("removed %s, left by a killed run", path)
    return removed


def _flush(fd: int, partial: Path) -> None:
    """The dump on disk before it is named one: rotation then deletes an
    older dump, and a power cut must not leave an empty file in its place."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise MaintError(f"{partial}: the dump could not be written to disk: "
                         f"{exc.strerror or exc}") from None


def dump(params: ConnectParams, directory: Path, *, label: str, keep: int) -> Path:
    """pg_dump the database into directory, rotate, return the dump's path."""
    safe_dir(directory, 0o700, "[paths] backup")
    remove_leftovers(directory)
    final = directory / dump_name(directory, params.dbname, label)
    partial = directory / f".{final.name}.partial"
    # Opened here, by root, so the dump is root's whoever pg_dump runs as.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # pg_dump's stdout holds it too (remove_stale_partials)
        # subprocess, not system.run: stdout must go straight to the file,
        # and pg_dump may have to run as the postgres user (db/client.py).
        done = subprocess.run(
            _pg_dump_argv(params),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.PIPE,
            check=False,
            **client.run_kwargs(params),
        )
        if done.returncode == 0:
            _flush(fd, partial)
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        last = client.failure(done.stderr, done.returncode, params)
        if params.lock_wait and "statement timeout" in last:  # --lock-wait-timeout's way
            last += (f" (it waited {params.lock_wait:g}s, [database] statement_lock_timeout, "
                     "for a table another session holds locked: let that session finish or "
                     "end it)")
        raise MaintError(f"pg_dump of database {params.dbname} failed: {last}")
    partial.rename(final)
    fsync_dir(directory)  # the name too, before rotation deletes an older dump
    for path in rotate(directory, params.dbname, keep, taken=final):
        log.info("removed old backup %s", path)
    return final
