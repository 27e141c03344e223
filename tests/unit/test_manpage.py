"""ivle-maint(8) and ivle-maint.conf(5), generated from the parser and the spec."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from ivle_maint.cli import build_parser
from ivle_maint.config import SETTINGS_SPEC

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make-manpage.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_manpage", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def actions(parser: argparse.ArgumentParser, words: str):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{words} {name}", helps.get(name)
                yield from actions(sub, f"{words} {name}")
        else:
            yield f"{words} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_command_option_and_positional_has_help():
    missing = [where for where, text in actions(build_parser(), "ivle-maint") if not text]
    assert missing == []


def test_section_8_page_has_every_section():
    page = load_script().manpage("2026-01-01")
    assert page.startswith(".TH IVLE\\-MAINT 8 ")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert f".SH {section}\n" in page
    for name in ("IVLECONF", "IVLE_MAINT_CONF", "DPKG_MAINTSCRIPT_PACKAGE"):
        assert f"\\fB{name}\\fR" in page
    for default in ("/var/lib/ivle\\-maint", "/var/log/ivle\\-maint",
                    "/var/backups/ivle\\-maint", "/run/ivle\\-maint"):
        assert default in page
    assert "cluster forget" in page and "the node's name" in page


def test_conf_page_lists_every_key_of_the_spec():
    page = load_script().conf_manpage("2026-01-01")
    keys = [line.split("=")[0].strip() for line in SETTINGS_SPEC.splitlines()
            if "=" in line and not line.lstrip().startswith("#")]
    for key in keys:
        assert f"\\fB{key.replace('-', chr(92) + '-')}\\fR" in page, key
    assert "keep: an integer, at least 1; default: 20" in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("conf", [False, True])
def test_pages_render_without_warnings(tmp_path, conf):
    module = load_script()
    page = tmp_path / "page"
    page.write_text(module.conf_manpage("2026-01-01") if conf else module.manpage("2026-01-01"))
    done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                          text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "FILES" in done.stdout


def test_exit_status_has_one_entry_per_status_with_wrapped_lines_joined():
    page = load_script().manpage("2026-01-01")
    section = page.split(".SH EXIT STATUS\n", 1)[1].split(".SH ", 1)[0]
    codes = [line[3:-3] for line in section.splitlines() if line.startswith("\\fB")]
    assert codes == ["0", "1", "2", "75", "130", "143"]
    assert "dpkg's arguments to 'hook' too" in section.replace("\\-", "-")


def test_a_list_default_is_shown_whole():
    page = load_script().conf_manpage("2026-01-01")
    assert "sites: a comma\\-separated list of Apache site names, at least one; " \
        "default: ivle\n" in page
    assert "list(" not in page


def test_dh_ivle_maint_see_also_names_a_file_its_package_installs():
    repo = SCRIPT.parents[1]
    pod = (repo / "debhelper" / "dh_ivle_maint").read_text()
    see_also = pod.split("=head1 SEE ALSO", 1)[1].split("=head1", 1)[0]
    docs = (repo / "debian" / "dh-ivle-maint.docs").read_text().split()
    named = [f"F</usr/share/doc/dh-ivle-maint/{Path(doc).name}.gz>" for doc in docs]
    assert any(name in see_also for name in named), see_also
    for doc in docs:
        assert (repo / doc).is_file()
    for doc in (repo / "debian" / "ivle-maint.docs").read_text().split():
        assert (repo / doc).is_file(), doc
