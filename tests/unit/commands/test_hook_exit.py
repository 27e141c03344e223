"""cli.main, as dpkg's hook, exits without the interpreter's teardown (which
dpkg waits for with the web server down), having written what it said;
every other command ends as Python ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# An exit handler stands for the teardown: it runs only when Python ends as usual.
PROBE = """
import atexit, sys
from ivle_maint import cli
from ivle_maint.gates import root
from ivle_maint.commands import {module} as module
root.require = lambda *args: None
def act(ctx):
    print("said")
    {body}
module.{function} = act
atexit.register(lambda: print("torn down"))
sys.argv = ["ivle-maint", *{argv!r}]
sys.exit(cli.main())
"""


def run(module: str, function: str, argv: list[str], body: str) -> subprocess.CompletedProcess:
    code = PROBE.format(module=module, function=function, argv=argv, body=body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False, env={"PYTHONPATH": str(REPO),
                                                       "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("body", "status"), [
    ("return 0", 0),
    ("return 3", 3),
    ("from ivle_maint.errors import MaintError; raise MaintError('no')", 1),
])
def test_a_hook_ends_without_teardown_having_said_everything(body, status):
    done = run("upgrade", "cmd_hook", ["hook", "postrm", "upgrade", "1.1"], body)
    assert done.returncode == status, done.stderr
    assert done.stdout.splitlines() == ["said"]  # written, and no teardown after it
    if status == 1:
        assert done.stderr.strip() == "ivle-maint: error: no"


def test_any_other_command_ends_as_python_does():
    done = run("upgrade", "cmd_plan", ["plan", "--to", "1.1"], "return 0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["said", "torn down"]
