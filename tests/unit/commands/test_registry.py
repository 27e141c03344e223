"""cli.py builds the parser of the chosen command's module alone: which
module registers which command (commands.REGISTERED_BY) must be right, or
a command would be missing from its own parser."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

from ivle_maint import commands
from ivle_maint.cli import build_parser, command_module

MODULES = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))


def registered(module: str) -> set[str]:
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    importlib.import_module(f"{commands.__name__}.{module}").register(sub)
    return set(sub.choices)


@pytest.mark.parametrize("module", MODULES)
def test_each_command_is_found_in_the_module_that_registers_it(module):
    names = registered(module)
    assert names
    assert {name: command_module([name]) for name in names} == dict.fromkeys(names, module)


def test_the_parsers_of_all_modules_together_are_the_full_parser():
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set().union(*(registered(m) for m in MODULES))


@pytest.mark.parametrize(("argv", "module"), [
    (["db", "status"], "db"),
    (["--config", "db", "plan", "--to", "1.1"], "upgrade"),  # FILE named db
    (["--conf", "db", "status"], "upgrade"),  # argparse's abbreviation
    (["--config=x", "-v", "hold", "status"], "hold"),
    (["-v", "--help", "db"], None),
    (["-vh", "db"], None),
    (["--he", "db"], None),
    (["--", "db"], None),
    (["-v"], None),
    ([], None),
])
def test_the_command_is_the_first_word_no_option_takes(argv, module):
    assert command_module(argv) == module


def test_an_unknown_command_gets_the_full_parser_and_its_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser(command_module(["dbx"])).parse_args(["dbx"])
    assert "choose from 'plan', 'upgrade'" in capsys.readouterr().err


def test_a_command_parses_alike_alone_and_in_the_full_parser():
    argv = ["--config", "c", "plan", "--from", "1.0", "--to", "1.1", "--during-upgrade", "stop"]
    alone = vars(build_parser(command_module(argv)).parse_args(argv))
    full = vars(build_parser().parse_args(argv))
    assert alone == full
