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
    path = tmp_path / f"my backups $(touch {canary})" / "ivle-x.dump"
    params = ConnectParams("ivle db", "127.0.0.1", 5432, "ivle", "secret")
    command = backup.restore_command(params, path)
    argv = shlex.split(command)
    assert argv[0] == "pg_restore" and argv[-1] == str(path)
    assert "--dbname=ivle db" in argv and "secret" not in command
    # The shell hands pg_restore exactly these words and runs no $(...).
    done = subprocess.run(["sh", "-c", f"set -- {command}; printf '%s\\n' \"$@\""],
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == argv
    assert not canary.exists()
    as_postgres = ConnectParams("ivle", "/run/postgresql", 5432, None, os_user="postgres")
    assert shlex.split(backup.restore_command(as_postgres, path))[:4] == [
        "sudo", "-u", "postgres", "pg_restore"]
