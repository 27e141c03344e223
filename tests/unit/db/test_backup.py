"""db.backup without a server: the restore command, rotation and pins."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from ivle_maint.db import backup
from ivle_maint.db.connect import ConnectParams


def test_restore_command_is_shell_quoted(tmp_path: Path) -> None:
    """A backup path with a space or $(...) is one word, and runs nothing."""
    canary = tmp_path / "canary"
    path = tmp_path / f"it's my backups $(touch {canary}) \"`x`\"" / "ivle-x.dump"
    params = ConnectParams("ivle db", "127.0.0.1", 5432, "ivle", "secret")
    command = backup.restore_command(params, path, fill_as=params)
    assert "secret" not in command
    create, _, rest = command.partition(" && ")
    fill, _, swap = rest.partition(", then with IVLE's web server and user management "
                                   "server stopped: ")
    fill, _, source = fill.partition(" < ")
    assert shlex.split(source) == [str(path)]  # read by the shell: one word
    for part in (create, fill, swap, f"x {source}"):
        argv = shlex.split(part)
        # The shell hands the program exactly these words and runs no $(...).
        done = subprocess.run(["sh", "-c", f"set -- {part}; printf '%s\\n' \"$@\""],
                              capture_output=True, text=True, check=True)
        assert done.stdout.splitlines() == argv
    assert not canary.exists()
    assert shlex.split(fill)[-1] == "--dbname=dbname='ivle db_restored'"


def test_restore_command_never_restores_over_the_live_database(tmp_path: Path) -> None:
    """pg_restore --clean fails on IVLE's schema (a function that depends on
    a table): a new database, restored, then the names swapped at once."""
    path = tmp_path / "ivle-x.dump"
    as_postgres = ConnectParams("ivle", "/run/postgresql", 5432, "postgres", None,
                                os_user="postgres")
    ivle = ConnectParams("ivle", "127.0.0.1", 5432, "ivle_user", "secret")
    command = backup.restore_command(as_postgres, path, owner="ivle_user", fill_as=ivle)
    assert "secret" not in command
    assert "--clean" not in command
    create, _, rest = command.partition(" && ")
    fill, _, swap = rest.partition(", then with IVLE's web server and user management "
                                   "server stopped: ")
    where = ["--port=5432", "--host=/run/postgresql", "--username=postgres"]
    assert shlex.split(create) == ["sudo", "-u", "postgres", "createdb", *where,
                                   "--template=template0", "--owner=ivle_user", "ivle_restored"]
    # Filled as ivle.conf's login, never the superuser (client.restore_argv).
    assert shlex.split(fill) == ["pg_restore", "--port=5432", "--host=127.0.0.1",
                                 "--username=ivle_user", "--exit-on-error", "--no-owner",
                                 "--dbname=dbname='ivle_restored'", "<", str(path)]
    assert shlex.split(swap) == [
        "sudo", "-u", "postgres", "psql", *where, "--dbname=postgres", "--set=ON_ERROR_STOP=1",
        '--command=ALTER DATABASE "ivle" RENAME TO "ivle_replaced"; '
        'ALTER DATABASE "ivle_restored" RENAME TO "ivle"']


def _touch_dumps(directory: Path, count: int) -> list[Path]:
    directory.mkdir(mode=0o700, exist_ok=True)
    made = []
    for i in range(count):
        path = directory / f"ivle-2026010{i + 1}T000000.000000Z-before-x.dump"
        path.write_bytes(b"PGDMP")
        made.append(path)
    return made


def test_rotation_never_deletes_a_pinned_dump(tmp_path: Path) -> None:
    from ivle_maint.db import pins

    first, second, *rest = _touch_dumps(tmp_path, 6)
    pins.record(tmp_path, "1.0->1.1@1", first, pins.marker_fingerprint(["a"]), "e")
    pins.record(tmp_path, "1.0->1.1@1", second, pins.marker_fingerprint(["a", "b"]), "e")
    assert backup.rotate(tmp_path, "ivle", 1) == rest[:-1]
    assert backup.backups(tmp_path, "ivle") == [first, second, rest[-1]]
    # A retry with the same marker reuses the last dump; another epoch does not.
    marker = pins.marker_fingerprint(["b", "a"])
    assert pins.reusable(tmp_path, "1.0->1.1@1", marker, "e") == second
    assert pins.reusable(tmp_path, "1.0->1.1@1", marker, "after an abort") is None
    # Completed: the first dump stays (last completed upgrade), the last one goes.
    pins.complete(tmp_path, "1.0->1.1@1", unfinished=[])
    assert backup.rotate(tmp_path, "ivle", 1) == [second]
    assert pins.first_dump(tmp_path, "1.0->1.1@1") == first
    # The next upgrade completes: the older one's pin goes too.
    pins.record(tmp_path, "1.1->1.2@2", rest[-1], marker, "f")
    pins.complete(tmp_path, "1.1->1.2@2", unfinished=[])
    assert backup.rotate(tmp_path, "ivle", 1) == [first]


def test_stale_partial_dumps_go_unless_still_written(tmp_path: Path) -> None:
    import fcntl
    import os

    stale = tmp_path / ".ivle-20260101T000000.000000Z-x.dump.partial"
    busy = tmp_path / ".ivle-20260102T000000.000000Z-x.dump.partial"
    stale.write_bytes(b"half")
    fd = os.open(busy, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert backup.remove_stale_partials(tmp_path) == [stale]
    finally:
        os.close(fd)
    assert busy.exists() and not stale.exists()


def test_an_unreadable_pin_record_stops_rotation_not_the_dump(tmp_path: Path) -> None:
    made = _touch_dumps(tmp_path, 3)
    (tmp_path / "pinned.json").write_text("{not json")
    assert backup.rotate(tmp_path, "ivle", 1) == []
    assert backup.backups(tmp_path, "ivle") == made


def test_rotation_keeps_the_newest_dumps_whatever_else_is_named_like_one(tmp_path: Path) -> None:
    """Beside real dumps, things named like dumps: a directory, a symlink to
    a file elsewhere, an immutable dump.  Rotation never fails over them,
    never counts them among the dumps it keeps (a real dump deleted in
    their place), never follows the link, and keeps the newest KEEP real
    dumps."""
    import shutil
    import subprocess

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(kinds=st.lists(st.sampled_from(["dump", "directory", "symlink", "immutable"]),
                          min_size=1, max_size=7), keep=st.integers(1, 4))
    def case(kinds: list[str], keep: int) -> None:
        directory, outside = tmp_path / "backup", tmp_path / "outside"
        directory.mkdir(mode=0o700)
        outside.write_bytes(b"not a dump")
        try:
            real = []
            for i, kind in enumerate(kinds, 1):
                path = directory / f"ivle-20260101T00000{i}.000000Z-x.n{i:06d}.dump"
                if kind == "directory":
                    path.mkdir()
                elif kind == "symlink":
                    path.symlink_to(outside)
                else:
                    path.write_bytes(b"PGDMP")
                    real.append(path)
                    if kind == "immutable":
                        subprocess.run(["chattr", "+i", str(path)], check=True)
            backup.rotate(directory, "ivle", keep)
            left = [p for p in real if p.exists()]
            assert left[-keep:] == real[-keep:]
            assert outside.read_bytes() == b"not a dump"
        finally:
            subprocess.run(["chattr", "-R", "-i", str(directory)], check=False,
                           capture_output=True)
            shutil.rmtree(directory)
            outside.unlink()

    case()
