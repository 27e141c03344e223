"""cli.main, as the command itself, pauses the cyclic collector while
ivle_maint loads, and resumes it before the command acts, unless the
command is brief (db status, plan: reads that end soon)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ivle_maint.cli import build_parser, command_module

REPO = Path(__file__).resolve().parents[3]

# The command function replaced by one that says whether the collector runs
# (and the root check by one that lets anyone through).
PROBE = """
import gc, json, sys
from ivle_maint import cli
from ivle_maint.gates import root
from ivle_maint.commands import {module} as module
root.require = lambda *args: None
module.{function} = lambda ctx: print(json.dumps(gc.isenabled())) or 0
sys.argv = ["ivle-maint", *{argv!r}]
sys.exit(cli.main())
"""


def collector_on_when_acting(module: str, function: str, argv: list[str]) -> bool:
    code = PROBE.format(module=module, function=function, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO),
                                                      "PATH": "/usr/bin:/bin"})
    on: bool = json.loads(done.stdout.splitlines()[-1])
    return on


@pytest.mark.parametrize(("module", "function", "argv", "on"), [
    ("db", "show_status", ["db", "status"], False),
    ("upgrade", "cmd_plan", ["plan", "--to", "1.1"], False),
    ("db", "run_baseline", ["db", "baseline", "20090101"], True),
    ("upgrade", "cmd_upgrade", ["upgrade", "--to", "1.1"], True),
])
def test_only_a_brief_command_runs_with_the_collector_paused(module, function, argv, on):
    assert collector_on_when_acting(module, function, argv) is on


def test_brief_commands_are_db_status_and_plan():
    for argv, brief in ((["db", "status"], True), (["plan", "--to", "1.1"], True),
                        (["db", "migrate"], False), (["status"], False),
                        (["settings", "--spec"], False)):
        args = build_parser(command_module(argv)).parse_args(argv)
        assert args.brief is brief, argv
