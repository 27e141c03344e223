"""Every ivle-maint command ivle-maint tells a person to run on this node
comes from one renderer, gates.text.ivle_maint: it names the run's
--config FILE (pasted without it, the command reads the default settings:
another node's database, maybe) and quotes each word (a node name read
from the database, a path).  The resume line is the other way, rendered
when printed (cli.resume_line).

The cases are generated from the source itself: every string literal of
ivle_maint that spells out `ivle-maint COMMAND` is a command written by
hand, which names no --config; only those listed below are allowed, each
with why."""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.cli import build_parser
from ivle_maint.gates import text

PACKAGE = Path(__file__).resolve().parents[3] / "ivle_maint"
BASH = shutil.which("bash", path="/usr/bin:/bin") or "/bin/bash"

RESUME = "a resume: cli.resume_line names --config when it is printed"
ALLOWED = {
    ("codestate.py", "'s code, then: ivle-maint hook --package-version "): RESUME,
    ("codestate.py", "'s code, then: ivle-maint upgrade --from "): RESUME,
    ("commands/cluster.py", "ivle-maint cluster prepare --to "): RESUME,
    ("commands/upgrade.py", "ivle-maint rerun"): RESUME,
    ("commands/upgrade.py", ": ivle-maint rerun --abandon)"): RESUME,
    ("context.py", "ivle-maint rerun"): RESUME,
    ("journal.py", "ivle-maint rerun"): RESUME,
    ("db/lock.py", "ivle-maint rerun"): "a resume, and what resumes start with",
    ("db/lock.py", "ivle-maint rerun --terminate-stale-lock"): RESUME,
    ("db/lock.py", "ivle-maint upgrade"): "what resumes start with",
    ("db/migrations.py", "ivle-maint db migrate"): RESUME,
    ("db/plan.py", "ivle-maint rerun "): RESUME,
    ("hooks.py", "dpkg --configure -a  (or: ivle-maint rerun)"): RESUME,
    ("rollback/run.py", "dpkg --configure -a  (or: ivle-maint rerun)"): RESUME,
    ("runner.py", "ivle-maint rerun  (finishes giving the site back)"): RESUME,
    ("upgrade.py", "ivle-maint rerun"): "what resumes start with",
    ("upgrade.py", "ivle-maint db migrate "): RESUME,
    ("upgrade.py", "ivle-maint upgrade --from "): RESUME,
    ("db/migrations.py", "ivle-maint db backup"): "what a session is for, in the log",
    ("rollback/checks.py", "ivle-maint settings"): "a check's name: the settings file",
    ("cluster/admin.py", "recorded by ivle-maint services"): "a row's note: who wrote it",
    ("warm.py", ") ended without an exit status; see 'ivle-maint status'\n"):
        "dpkg's postinst: never given --config (warm.wanted)",
}
# Prose that names a command without being one to run.
ALLOWED_PROSE = re.compile(r"'ivle-maint hook' line|\(ivle-maint cluster status\)")


def _commands() -> list[str]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


SPELLED = re.compile(rf"ivle-maint ({'|'.join(_commands())})\b")


def _not_messages(tree: ast.AST) -> set[int]:
    """Docstrings and --help texts: they say what a command does, for any run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):  # fmt: skip
            skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog"):
            skip.update(id(n) for n in ast.walk(node.value))
        value = node.value if isinstance(node, ast.Assign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                and "\n" in value.value:  # fmt: skip
            skip.add(id(value))  # the settings' spec, a command group's --help text
    return skip


def _spelled_out() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _not_messages(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) \
                    or id(node) in skip:  # fmt: skip
                continue
            if SPELLED.search(ALLOWED_PROSE.sub("", node.value)):
                found.append((str(path.relative_to(PACKAGE)), node.value))
    return found


SPELLED_OUT = _spelled_out()


@pytest.mark.parametrize(("where", "literal"), SPELLED_OUT)
def test_no_ivle_maint_command_is_spelled_out_by_hand(where: str, literal: str) -> None:
    assert (where, literal) in ALLOWED, (
        f"{where}: {literal!r} spells out an ivle-maint command: pasted, it names no "
        "--config FILE and quotes nothing; use gates.text.ivle_maint(...) (this node) or "
        "text.command('ivle-maint', ...) (another node, whose settings are its own)")


def test_every_allowed_literal_is_still_there() -> None:
    assert set(ALLOWED) <= set(SPELLED_OUT)


def _pasted(line: str) -> list[bytes]:
    stub = "ivle-maint() { printf '%s\\0' ivle-maint \"$@\"; }; "
    done = subprocess.run([BASH, "--norc", "--noprofile", "-c", stub + line],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    return done.stdout.split(b"\0")[:-1]


_WORD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=20) | st.sampled_from(["x;reboot", "$(id)", "a'b", "-\n"])


@settings(max_examples=60, deadline=None)
@given(config=st.none() | _WORD.map(lambda w: "/etc/" + w.replace("/", "_")),
       words=st.lists(_WORD, min_size=1, max_size=3))
def test_a_rendered_command_pastes_to_the_words_and_the_runs_settings(
        config: str | None, words: list[str]) -> None:
    """Pasted into bash, ivle_maint(*WORDS) runs ivle-maint [--config FILE]
    WORDS exactly, and is one printable line whatever the words hold."""
    text.invoked_with(config)
    try:
        line = text.ivle_maint(*words)
    finally:
        text.invoked_with(None)
    assert line.isprintable() and text.block(line) == line
    head = [] if config is None else [b"--config", os.fsencode(os.path.abspath(config))]
    assert _pasted(line) == [b"ivle-maint", *head, *map(os.fsencode, words)]
