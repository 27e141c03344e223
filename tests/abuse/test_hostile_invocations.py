"""Hostile invocations of the real command line (cli.py, config.py): every
option and operand of every command, found by walking the argument
parser itself, given a value that is empty or (where it names a version)
no version, or given twice; settings and ivle.conf named by an empty or a relative
$IVLE_MAINT_CONF / $IVLECONF / --config.

Each answer is one error line and a nonzero exit status, or the normal
result; never a traceback, and nothing done: ivle.conf byte for byte, the
site serving, no journal, nothing recorded in the database.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cli import build_parser
from ivle_maint.errors import MaintError
from ivle_maint.versions import check
from support.abuse_helpers import error_lines
from support.upgrade_helpers import REPO, at_version_1_0, journal, marker_keys


def shared_node(examples: int) -> settings:
    """Hypothesis settings for EXAMPLES runs on one node (the fixture's)."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def values_taken(parser: argparse.ArgumentParser, words: tuple[str, ...] = (),
                 ) -> Iterator[tuple[tuple[str, ...], argparse.Action, argparse.ArgumentParser]]:
    """Every (command words, action, its parser) whose action takes a value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from values_taken(sub, (*words, name))
        elif action.nargs not in (0, argparse.REMAINDER) and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction):
            yield words, action, parser


# The values that name a version (the error line says "not a valid version").
VERSION_METAVARS = frozenset({"VERSION", "OLD", "NEW"})
# hook --package-version is checked by hooks.py, named after the maintainer
# script as dpkg's own arguments are (test_hostile_hook_calls.py).
CASES = [case for case in values_taken(build_parser())
         if case[0] != ("hook",) or case[1].metavar not in VERSION_METAVARS]
VERSION_CASES = [case for case in CASES if case[1].metavar in VERSION_METAVARS]
# Commands that change nothing: every one reads the settings, these ivle.conf.
READS_IVLE_CONF = ["media show", "mounts list", "db status", "plan --from 1.0 --to 1.1",
                   "cluster status", "settings"]
READ_ONLY = [*READS_IVLE_CONF, "status", "rerun", "hold status", "consoles list",
             "services status"]


def filler(action: argparse.Action) -> str:
    """A value the parser accepts for ACTION that makes no change."""
    if action.choices:
        return next((c for c in ("status", "list", "check") if c in action.choices),
                    str(next(iter(action.choices))))
    return "1.1" if action.metavar in VERSION_METAVARS else "x"


def argv_with(words: tuple[str, ...], action: argparse.Action, parser: argparse.ArgumentParser,
              value: str) -> list[str]:
    """The command WORDS with ACTION given VALUE, and what else its parser
    requires given a harmless value: as a person's script would run it."""
    if not words:  # ivle-maint's own option: before a command
        return [f"{action.option_strings[-1]}={value}", "status"]
    argv = list(words)
    if action.option_strings:  # '=': a value that looks like an option is still its value
        argv.append(f"{action.option_strings[-1]}={value}")
    for other in parser._actions:
        if other is action or not other.required or other.nargs == argparse.REMAINDER:
            continue
        if other.option_strings:
            argv += [other.option_strings[-1], filler(other)]
        elif not action.option_strings and parser._actions.index(other) > parser._actions.index(
                action):
            break  # positionals after the one given VALUE: it stops the parser first
        else:
            argv.append(filler(other))
    if not action.option_strings:
        argv += ["--", value] if value.startswith("-") else [value]
    if words == ("hook",) and action.option_strings:
        argv += ["preinst", "upgrade", "1.0", "1.1"]
    return argv


def run(node: Any, argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """ivle-maint ARGV on NODE from CWD, stdin closed, ENV over the node's."""
    full = {**os.environ, **node.env, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "ivle_maint", *argv], env=full, cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, check=False)


def state(node: Any) -> tuple[bytes, bytes, bool, bool, list[str], list[Path]]:
    return (node.ivle_conf.read_bytes(), node.maint_conf.read_bytes(),
            node.service_running("apache2"), node.service_running("ivle-usrmgt-server"),
            marker_keys(node), sorted(node.state_dir.glob("journal/*")))


@pytest.fixture
def site(node_factory: Any) -> Any:
    return at_version_1_0(node_factory(users=2, consoles=1, role="both"))


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory: what an empty path would have meant."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def named(words: tuple[str, ...], action: argparse.Action) -> str:
    """How the error line names ACTION: 'upgrade --to', 'db baseline'."""
    return " ".join([*words, *action.option_strings[-1:]])


@pytest.mark.needs_root
@pytest.mark.needs_postgres
def test_an_empty_value_of_any_option_or_operand_is_refused_before_anything(
        site: Any, elsewhere: Path) -> None:
    """An empty path is the working directory, an empty --expect no check,
    an empty --config the default settings: each a different run from the
    one asked for.  dpkg's own ARGS to 'hook' may be empty (not walked)."""
    wrong = []
    for words, action, parser in CASES:
        before = state(site)
        argv = argv_with(words, action, parser, "")
        done = run(site, argv, elsewhere)
        lines = error_lines(done)
        if (done.returncode != 2 or len(done.stderr.splitlines()) != 1 or len(lines) != 1
                or not lines[0].startswith(f"ivle-maint: error: {named(words, action)}: ")):
            wrong.append((argv, done.returncode, done.stderr))
        assert state(site) == before, argv
    assert journal(site) == {}
    assert not wrong, "\n".join(map(repr, wrong))


def two_values(action: argparse.Action) -> tuple[str, str]:
    """Two values the parser accepts for ACTION, different."""
    if action.choices:
        first, second, *_ = action.choices
        return str(first), str(second)
    return ("1.0", "1.1") if action.metavar in VERSION_METAVARS else ("x", "y")


ONE_VALUE = [case for case in CASES
             if type(case[1]) is argparse._StoreAction and case[1].option_strings]


@pytest.mark.needs_root
@pytest.mark.needs_postgres
def test_an_option_that_keeps_one_value_given_twice_is_refused_before_anything(
        site: Any, elsewhere: Path) -> None:
    """`--to 1.1 ... --to 1.2` (an alias's option, then a script's): argparse
    kept the last one silently, which may not be the one meant."""
    assert ONE_VALUE
    wrong = []
    for words, action, parser in ONE_VALUE:
        before = state(site)
        first, second = two_values(action)
        argv = argv_with(words, action, parser, first)
        given = argv.index(f"{action.option_strings[-1]}={first}")
        argv.insert(given + 1, f"{action.option_strings[-1]}={second}")
        done = run(site, argv, elsewhere)
        expected = (f"ivle-maint: error: {named(words, action)}: given twice ({first!r}, "
                    f"then {second!r}); give it once")
        if done.returncode != 2 or done.stderr != expected + "\n":
            wrong.append((argv, done.returncode, done.stderr[:300]))
        assert state(site) == before, argv
    assert journal(site) == {}
    assert not wrong, "\n".join(map(repr, wrong))


def no_version(text: str) -> bool:
    try:
        check(text)
    except MaintError:
        return True
    return False


@pytest.mark.needs_root
@pytest.mark.needs_postgres
@shared_node(30)
@given(case=st.sampled_from(VERSION_CASES),
       text=st.one_of(st.text(st.characters(blacklist_categories=["Cs"],
                                            blacklist_characters="\0"), max_size=12),
                      st.sampled_from(["-x", "--help", "1.0\udcff", "\udcff", "1.0" * 9000]),
                      ).filter(no_version))
def test_a_value_that_names_no_version_is_refused_wherever_a_version_is_asked(
        site: Any, elsewhere: Path, case: Any, text: str) -> None:
    """Journals, logs and resume lines are named after versions; `cluster
    status --expect` compared the table with whatever it was given."""
    words, action, parser = case
    before = state(site)
    done = run(site, argv_with(words, action, parser, text), elsewhere)
    assert done.returncode == 2, done.stderr[:300]
    (line,) = error_lines(done)
    assert line.startswith(f"ivle-maint: error: {named(words, action)}: not a valid version: "
                           f"{text[:40]!r}"), done.stderr[:300]
    assert len(done.stderr.splitlines()) == 1, done.stderr[:300]
    assert state(site) == before


def settings_without_ivle_conf_dir(node: Any, where: Path) -> Path:
    """The node's settings, ivle.conf found through $IVLECONF alone."""
    where.mkdir(mode=0o755, exist_ok=True)
    path = where / "ivle-maint.conf"
    text = node.maint_conf.read_text()
    path.write_text("".join(line for line in text.splitlines(keepends=True)
                            if not line.startswith("ivle_conf_dir")))
    path.chmod(0o644)
    return path


@pytest.mark.needs_root
@pytest.mark.needs_postgres
@shared_node(20)
@given(case=st.one_of(st.tuples(st.sampled_from(READS_IVLE_CONF), st.just("IVLECONF")),
                      st.tuples(st.sampled_from(READ_ONLY), st.just("IVLE_MAINT_CONF"))))
def test_an_empty_settings_or_ivle_conf_variable_is_refused_not_read_as_the_default(
        site: Any, elsewhere: Path, case: tuple[str, str]) -> None:
    """IVLE reads IVLECONF='' as the working directory; ivle-maint read the
    default /etc/ivle: two files.  IVLE_MAINT_CONF='' (a script's unset
    variable) read /etc/ivle/ivle-maint.conf: another node's database."""
    command, empty = case
    own = settings_without_ivle_conf_dir(site, site.root / "own-settings")
    before = state(site)
    env = {"IVLE_MAINT_CONF": str(own), empty: ""}
    done = run(site, command.split(), elsewhere, **env)
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: ${empty} is empty: unset it, or name "
                                 "a file or directory"], done.stderr
    assert state(site) == before


@pytest.mark.needs_root
@pytest.mark.needs_postgres
@shared_node(12)
@given(how=st.sampled_from(["--config", "IVLE_MAINT_CONF"]),
       spelling=st.sampled_from(["{name}", "./{name}", "x/../{name}", ".//{name}"]),
       conf_spelling=st.sampled_from(["{name}", "./{name}", "x/../{name}"]))
def test_a_relative_settings_or_ivle_conf_path_is_the_invoker_s_file_wherever_it_is_used(
        site: Any, how: str, spelling: str, conf_spelling: str) -> None:
    """Given relative, the path was kept relative: rollback's dpkg runs the
    hooks from / (IVLE_MAINT_CONF=that path), a restore point kept it to
    write back later.  Each is absolute, as the invoker's directory made it."""
    own = settings_without_ivle_conf_dir(site, site.root / "own-settings")
    (site.root / "own-settings" / "x").mkdir(exist_ok=True)
    cwd = own.parent
    relative = spelling.format(name=own.name)
    conf = os.path.relpath(site.conf_dir, cwd)
    env = {"IVLECONF": conf_spelling.format(name=conf)}
    if how == "--config":
        done = run(site, ["--config", relative, "settings"], cwd, **env)
    else:
        done = run(site, ["settings"], cwd, IVLE_MAINT_CONF=relative, **env)
    assert done.returncode == 0, done.stderr
    assert f"# settings file: {own}\n" in done.stdout
    assert f"# ivle.conf: {site.conf_dir / 'ivle.conf'}\n" in done.stdout


HOOK = ["hook", "preinst", "upgrade", "1.0", "1.1"]
# The environment's choices, and a command that reads each (UNPACK_TOGETHER
# and ACCEPT_DATA_LOSS: hooks alone); the yes-or-no ones through one gate
# (gates/environment.yes_or_no).
ENV_CHOICES = [("IVLE_MAINT_DURING_UPGRADE", HOOK),
               ("IVLE_MAINT_DURING_UPGRADE", ["upgrade", "--from", "1.0", "--to", "1.1"]),
               ("IVLE_MAINT_UNPACK_TOGETHER", HOOK),
               ("IVLE_MAINT_ROLLING", HOOK),
               ("IVLE_MAINT_ACCEPT_DATA_LOSS", HOOK),
               ("IVLE_MAINT_FULL_PROCEDURE", HOOK),
               ("IVLE_MAINT_FULL_PROCEDURE", ["upgrade", "--from", "1.0", "--to", "1.1"])]


@pytest.mark.needs_root
@pytest.mark.needs_postgres
@shared_node(15)
@given(case=st.sampled_from(ENV_CHOICES),
       value=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                     min_size=1, max_size=12).filter(
           lambda v: v.strip().lower() not in ("", "stop", "maintenance", "yes", "no", "true",
                                               "false", "1", "0", "auto", "always",
                                               "never")))
def test_a_choice_from_the_environment_that_is_none_is_bad_input_before_anything(
        site: Any, elsewhere: Path, case: tuple[str, list[str]], value: str) -> None:
    """What dpkg's hooks read from the environment is input like an option:
    a value that is no choice was exit 1 (a failed step), not 2."""
    name, argv = case
    before = state(site)
    done = run(site, argv, elsewhere, **{name: value})
    assert done.returncode == 2, done.stderr[:300]
    (line,) = error_lines(done)
    assert name in line, line
    assert state(site) == before
