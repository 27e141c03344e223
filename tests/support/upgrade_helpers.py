"""Driving whole upgrades on sandbox nodes the way dpkg and people do.

`ivle-maint` runs as a separate process, as under dpkg, so its exit
status, its output and a SIGKILL are all real.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from configobj import ConfigObj

from ivle_sandbox.node import Node, install_version
from ivle_sandbox.releases import NEW, OLD, RELEASES

REPO = Path(__file__).resolve().parents[2]
# The migration keys as the marker lists them: 1.0's, 1.1's new ones, both.
OLD_KEYS = sorted(k.removesuffix(".sql") for k in OLD)
NEW_KEYS = sorted(k.removesuffix(".sql") for k in NEW)
ALL_KEYS = sorted(k.removesuffix(".sql") for k in {**OLD, **NEW})
RESUME_LINE = "ivle-maint: resume with: dpkg --configure -a  (or: ivle-maint rerun)"


def cli(node: Node, *args: str, check: bool = False, pythonpath: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ivle-maint on NODE with stdin closed, as dpkg would.

    pythonpath: directories searched before the repository (broken modules);
    extra_env: what dpkg's environment adds (IVLE_MAINT_ACCEPT_DATA_LOSS...).
    """
    env = {**os.environ, **node.env, **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([*pythonpath, str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "ivle_maint", *args], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300, check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"ivle-maint {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")
    return done


def start_cli(node: Node, *args: str, pythonpath: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    env = {**os.environ, **node.env, "PYTHONPATH": os.pathsep.join([*pythonpath, str(REPO)])}
    return subprocess.Popen(
        [sys.executable, "-m", "ivle_maint", *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )


def preinst(node: Node, old: str = "1.0", new: str = "1.1",
            pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return cli(node, "hook", "preinst", "upgrade", old, new, pythonpath=pythonpath)


def unpack(node: Node, version: str = "1.1", migrations: dict[str, str] | None = None) -> None:
    """What dpkg's unpack does to IVLE: the new code and migrations."""
    install_version(node, version, RELEASES.get(version, {}) if migrations is None
                    else migrations)


def postinst(node: Node, old: str = "1.0", new: str = "1.1") -> subprocess.CompletedProcess[str]:
    return cli(node, "hook", "--package-version", new, "postinst", "configure", old)


def set_setting(node: Node, section: str, key: str, value: object) -> None:
    """Change one of ivle-maint's settings on NODE (its settings file)."""
    conf = ConfigObj(str(node.maint_conf))
    conf.setdefault(section, {})[key] = str(value)
    conf.write()


def stubborn_console(node: Node) -> subprocess.Popen[str]:
    """A student's process in a user's jail that ignores SIGTERM: stop-consoles waits."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import signal, time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
         "time.sleep(600)"],
        cwd=node.jail("user0001") / "home" / "user0001", stdout=subprocess.PIPE, text=True,
        user=int(node.user("user0001").unixid),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def at_version_1_0(node: Node) -> Node:
    install_version(node, "1.0", RELEASES["1.0"])
    return node


def journal(node: Node, old: str = "1.0", new: str = "1.1") -> dict[str, Any]:
    path = node.state_dir / "journal" / f"{old}_to_{new}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for_step(node: Node, step: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the journal says STEP is running (the runner writes it first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_steps = journal(node).get("steps", {})
        if with_steps.get(step, {}).get("status") == "running":
            return
        if proc.poll() is not None:
            raise AssertionError(f"ivle-maint ended before {step}: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"{step} never started")


def home_checksums(node: Node) -> dict[str, str]:
    """sha256 of every file under every user's home, by path."""
    sums = {}
    for user in node.users:
        home = node.home(user.login)
        for path in sorted(home.rglob("*")):
            if path.is_file():
                sums[str(path.relative_to(node.root))] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    return sums


def marker_keys(node: Node) -> list[str]:
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ivle_maint_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                return []
            cur.execute("SELECT key FROM ivle_maint_migrations ORDER BY key")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def schema_signature(node: Node) -> list[tuple[str, str]]:
    """Every user table and column: enough to tell a migration ran."""
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY 1, 2"
            )
            return [tuple(row) for row in cur.fetchall()]
    finally:
        conn.close()


def ivle_conf_without_media(node: Node) -> list[str]:
    return [line for line in node.ivle_conf.read_text().splitlines()
            if not line.strip().startswith("version")]


def media_version(node: Node) -> str | None:
    for line in node.ivle_conf.read_text().splitlines():
        if line.strip().startswith("version"):
            return line.split("=", 1)[1].strip()
    return None


def final_state(node: Node) -> dict[str, Any]:
    """What a finished upgrade leaves, comparable between nodes."""
    return {
        "installed": node.installed_version(),
        "template": node.template_version(),
        "services": {s: node.service_running(s) for s in node.services},
        "mounts": len(node.mounts()),
        "consoles": len(node.console_pids()),
        "marker": marker_keys(node),
        "schema": schema_signature(node),
        "media": media_version(node),
        "journal": journal(node).get("state"),
    }


def write_row(node: Node, login: str) -> None:
    """A user's row written on the site (a rollback must keep or name it)."""
    conn = node.connect()
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO login (login, unixid, nick, fullname) "
                    "VALUES (%s, 9999, 'n', 'N')", (login,))
    conn.close()


def logins(node: Node) -> set[str]:
    conn = node.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT login FROM login")
        found = {row[0] for row in cur.fetchall()}
    conn.close()
    return found

