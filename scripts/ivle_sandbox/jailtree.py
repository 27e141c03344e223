"""The files of a sandbox node: jail template, user jails, installed IVLE.

Nothing here mounts or starts anything; node.py does that.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

FAKES = Path(__file__).resolve().parents[2] / "tests" / "fakes"

MIGRATIONS_README = """\
Database migrations for IVLE, applied in name order (YYYYMMDD-NN.sql).
This README is not a migration.
"""


def _chown(path: Path, uid: int) -> None:
    # Only root can give files away; unprivileged builds keep our uid.
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def make_template(path: Path, lib: Path) -> None:
    """A miniature jail root, with the installed IVLE code (lib) inside."""
    for sub in ("bin", "etc", "usr/lib", "usr/bin", "home"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "tmp").mkdir(exist_ok=True)
    (path / "tmp").chmod(0o1777)
    (path / "bin" / "sh").write_text("#!stand-in shell, not executable in the jail\n")
    (path / "etc" / "hostname").write_text("ivle-jail\n")
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    shutil.copytree(lib, path / "usr" / "lib" / "ivle", dirs_exist_ok=True)


def user_files(login: str, *, data_repeat: int = 128,
               extra: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """A student's work, by relative path in home/LOGIN: a space in a name,
    nested dirs, binary bytes (32 * DATA_REPEAT of them), and EXTRA.

    make_user_jail puts these in the sandbox's jails; the e2e chroot
    (scripts/e2e) writes bigger ones, with a non-ASCII name among them."""
    pattern = hashlib.sha256(login.encode()).digest()
    return {
        "README.txt": f"Home of {login}.\n".encode(),
        "my program.py": f"print('hello from {login}')\n".encode(),
        "work/week1/hello.py": b"def main():\n    return 42\n",
        "work/week2/data.bin": pattern * data_repeat,
        ".bashrc": b"# student's own settings\nexport EDITOR=nano\n",
        **(extra or {}),
    }


def make_user_jail(src: Path, login: str, unixid: int) -> None:
    """src/LOGIN with home/LOGIN (the user's files) and tmp/."""
    jail = src / login
    home = jail / "home" / login
    home.mkdir(parents=True)
    (jail / "tmp").mkdir()
    (jail / "tmp").chmod(0o1777)
    for name, data in user_files(login).items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [home, *home.rglob("*")]:
        _chown(path, unixid)


def install_code(share: Path, lib: Path, migrations: Path, version: str,
                 new_migrations: Mapping[str, str] | None = None) -> None:
    """What installing IVLE VERSION leaves on disk (the code, not the jail)."""
    services = share / "services"
    services.mkdir(parents=True, exist_ok=True)
    console = services / "python-console"
    shutil.copyfile(FAKES / "python-console", console)
    console.chmod(0o755)
    (share / "VERSION").write_text(f"{version}\n")
    package = lib / "ivle"
    package.mkdir(parents=True, exist_ok=True)
    (lib / "VERSION").write_text(f"{version}\n")
    # The jail-side file that changes with every release: ivle-buildjail
    # copies it into the template.
    init = f'"""IVLE {version} (sandbox)."""\n__version__ = "{version}"\n'
    (package / "__init__.py").write_text(init)
    migrations.mkdir(parents=True, exist_ok=True)
    (migrations / "README").write_text(MIGRATIONS_README)
    for name, text in (new_migrations or {}).items():
        (migrations / name).write_text(text)
