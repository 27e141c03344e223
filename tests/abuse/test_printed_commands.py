"""Commands ivle-maint prints for a person to paste (the resume line, the
restore command, the mv of a damaged journal): pasted into bash they run
exactly the command meant, whatever a path holds (a space, a quote,
`$(...)`, a newline, ESC, a bidi override, bytes that are not UTF-8), and
they are still one printable line.

Each is checked by pasting the printed text into bash, the programs it
names replaced by a function that prints its arguments NUL-separated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_sandbox.postgres import free_port
from ivle_sandbox.releases import RELEASES
from support.abuse_helpers import resume_line
from support.migration_site import fresh_site
from support.source_tree import source_tree
from support.upgrade_helpers import at_version_1_0, cli

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash", path="/usr/bin:/bin") or "/bin/bash"

# One path component, as a file system holds it: any byte but NUL and '/'.
# Mostly text (any code point, C0/C1 controls and bidi included), sometimes
# raw bytes that are not UTF-8, sometimes the shell's own metacharacters.
_CODEPOINT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/")
_NAME_TEXT = st.text(_CODEPOINT | st.sampled_from(list(" '\"$`\\!;&|*?~\n\x1b\u202e\x85")),
                     min_size=1, max_size=40)
_NAME_BYTES = st.binary(min_size=1, max_size=20).map(
    lambda b: b.replace(b"\x00", b"_").replace(b"/", b"_"))
NAMES = (_NAME_TEXT.map(lambda t: t.encode("utf-8")) | _NAME_BYTES).filter(
    lambda b: b not in (b".", b".."))
# The names a person may give as --config FILE: config.given_path refuses
# one that is not printable (tests/unit/test_config.py), shell
# metacharacters, spaces and quotes are all kept.
GIVEN_NAMES = NAMES.filter(lambda b: os.fsdecode(b).isprintable())


def pasted(line: str, *programs: str) -> list[list[bytes]]:
    """The argument vectors bash runs LINE with, PROGRAMS only printed."""
    stubs = "".join(f"{p}() {{ printf '%s\\0' \"$#\" {p} \"$@\"; }}; " for p in programs)
    done = subprocess.run([BASH, "--norc", "--noprofile", "-c", stubs + line],
                          capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                          check=False)
    assert done.returncode == 0, (line, done.stderr)
    fields, runs = done.stdout.split(b"\0")[:-1], []
    while fields:
        count, fields = int(fields[0]) + 1, fields[1:]
        runs.append(fields[:count])
        fields = fields[count:]
    return runs


@pytest.mark.needs_postgres
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_db_migrates_resume_line_names_the_migrations_it_was_given(
        postgres: Any, tmp_path_factory: pytest.TempPathFactory, name: bytes) -> None:
    """`db migrate --migrations DIR` that fails (the server down): the resume
    line, pasted, runs `db migrate --migrations DIR` on the same DIR, not
    the installed migrations of [paths] migrations."""
    site = fresh_site(postgres, tmp_path_factory.mktemp("resume"), "res")
    site.settings(port=free_port(), wait_timeout=0.3)
    os.chown(site.migrations, 0, 0)
    other = os.path.join(os.fsencode(site.root), name)
    os.rename(site.migrations, other)
    done = subprocess.run(
        [sys.executable, "-m", "ivle_maint", "db", "migrate", "--migrations", other],
        env={**os.environ, "IVLE_MAINT_CONF": str(site.root / "etc" / "ivle-maint.conf")},
        cwd=REPO, capture_output=True, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert all(line.isprintable() for line in err.splitlines()), err
    assert [ln for ln in err.splitlines() if ln.startswith("ivle-maint: error:")], err
    runs = pasted(resume_line(err), "ivle-maint")
    assert runs == [[b"ivle-maint", b"db", b"migrate", b"--migrations", other]], err


@pytest.mark.needs_root
@pytest.mark.needs_postgres
@pytest.mark.parametrize("name", [
    b"ivle 1.1 $(touch pwned)\n\x1b[31m'`x`",
    "ivle-\u202e1.1\x85\t~!".encode(),  # (a name not UTF-8: system.run's traceback)
])
def test_a_source_upgrades_resume_line_runs_the_same_upgrade(
        node_factory: Any, name: bytes) -> None:
    """`upgrade --source TREE --migrations DIR --allow-out-of-order` whose
    ./setup.py install fails: the resume line, pasted, runs the same
    upgrade (the same TREE and DIR, the same option), whatever TREE's name."""
    node = at_version_1_0(node_factory(users=1, consoles=0))
    built = source_tree(node, RELEASES["1.1"])
    tree = os.path.join(os.fsencode(built.parent), name)
    os.rename(built, tree)
    Path(os.fsdecode(tree), "FAIL_INSTALL").write_text("")
    migrations = os.path.join(tree, b"mig rations\n$HOME")  # not the tree's default
    shutil.copytree(os.path.join(tree, b"userdb", b"migrations"), migrations)
    argv = [b"upgrade", b"--from", b"1.0", b"--source", tree,
            b"--migrations", migrations, b"--allow-out-of-order"]
    failed = cli(node, *(os.fsdecode(a) for a in argv))
    assert failed.returncode == 1, failed.stderr
    assert all(line.isprintable() for line in failed.stderr.splitlines()), failed.stderr
    [run] = pasted(resume_line(failed.stderr), "ivle-maint")
    words = run[1:]
    assert words[words.index(b"--to") + 1] == b"1.1"
    del words[words.index(b"--to"):words.index(b"--to") + 2]
    assert sorted(words) == sorted(argv), failed.stderr


_VALUE = st.text(_CODEPOINT | st.sampled_from(list(" '\"$`\\!;\n\x1b\u202e\x85")),
                 min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(name=NAMES, dbname=_VALUE, user=_VALUE, os_user=st.none() | _VALUE)
def test_the_restore_command_shown_pastes_to_the_dump_and_database_named(
        name: bytes, dbname: str, user: str, os_user: str | None) -> None:
    """`status`'s restore command, as the sink shows it (gates.text.block):
    pasted, its programs get the dump's path and ivle.conf's names exactly."""
    from ivle_maint.db.backup import restore_command
    from ivle_maint.db.connect import ConnectParams
    from ivle_maint.gates.text import block

    dump = Path(os.fsdecode(b"/var/backups/ivle-maint/" + name))
    params = ConnectParams(dbname=dbname, host="127.0.0.1", port=5432, user=user,
                           os_user=os_user)
    line = block(restore_command(params, dump, owner=user, fill_as=params))
    assert "\n" not in line and line.isprintable()
    # The text between the commands is prose: each command pasted alone.
    create_fill, swap = line.split(", then with IVLE's web server and user management "
                                   "server stopped: ")
    create, fill = create_fill.split(" && ")
    fill, source = fill.split(" < ")
    head = [b"sudo", b"-u", os.fsencode(os_user)] if os_user is not None else []
    [ran] = pasted(create, "sudo", "createdb")
    assert ran[:len(head)] == head and ran[-1] == f"{dbname}_restored".encode()
    assert f"--username={user}".encode() in ran and f"--owner={user}".encode() in ran
    [ran] = pasted(f"printf '%s\\0' 1 {source}")
    assert ran == [os.fsencode(dump)]
    [ran] = pasted(swap, "sudo", "psql")
    ident = ('"' + dbname.replace('"', '""') + '"').encode()
    assert any(ident in word for word in ran if word.startswith(b"--command="))


@pytest.mark.needs_postgres
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=GIVEN_NAMES)
def test_a_resume_line_names_the_settings_file_the_run_was_given(
        postgres: Any, tmp_path_factory: pytest.TempPathFactory, name: bytes) -> None:
    """`ivle-maint --config FILE db migrate` that fails: the resume line,
    pasted, reads FILE too (without it, the default settings: another
    database, maybe), whatever FILE's (printable) name."""
    site = fresh_site(postgres, tmp_path_factory.mktemp("config"), "cfg")
    site.settings(port=free_port(), wait_timeout=0.3)
    config = os.path.join(os.fsencode(site.root / "etc"), name)
    os.rename(site.root / "etc" / "ivle-maint.conf", config)
    done = subprocess.run(
        [sys.executable, "-m", "ivle_maint", "--config", config, "db", "migrate"],
        env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
        cwd=REPO, capture_output=True, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert all(line.isprintable() for line in err.splitlines()), err
    runs = pasted(resume_line(err), "ivle-maint")
    assert runs == [[b"ivle-maint", b"--config", config, b"db", b"migrate"]], err


# A path word holding what the resume line's --config is put before: the
# words "ivle-maint " and a command name, inside a path that gets quoted.
_HOSTILE_WORD = st.builds(
    lambda before, name, after: (before.encode() + b" ivle-maint " + name.encode()
                                 + after),
    _VALUE, st.sampled_from(["db", "rerun", "upgrade", "status"]), NAMES | st.just(b""))


@settings(max_examples=80, deadline=None)
@given(path=_HOSTILE_WORD | NAMES | st.sampled_from([b"x:ivle-maint", b"x@ivle-maint"]),
       config=NAMES, prose=st.booleans(), more=st.sampled_from([(), ("db",), ("--x", "db")]))
def test_a_resume_lines_config_goes_before_its_commands_never_into_a_quoted_word(
        path: bytes, config: bytes, prose: bool, more: tuple[str, ...]) -> None:
    """`ivle-maint --config FILE ...`'s resume line names FILE in each
    ivle-maint command in it, and nowhere else: a quoted path holding
    "ivle-maint db" (a source tree, a migrations directory) is pasted back
    as the same path, not with --config FILE spliced into it."""
    from ivle_maint.cli import resume_line
    from ivle_maint.gates.text import block, command

    word = os.fsdecode(b"/srv/" + path)
    resume = command("ivle-maint", "db", "migrate", "--migrations", word, *more)
    if prose:  # as upgrade.py words one: prose, then the command
        resume = f"fix the cause, then run the upgrade again: {resume}"
    config_file = os.fsdecode(b"/etc/" + config)
    line = block(resume_line(resume, config_file))
    assert "\n" not in line and line.isprintable()
    if prose:
        line = line.split(": ", 1)[1]
    runs = pasted(line, "ivle-maint")
    assert runs == [[b"ivle-maint", b"--config", os.fsencode(config_file), b"db", b"migrate",
                     b"--migrations", os.fsencode(word), *map(os.fsencode, more)]], line


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=GIVEN_NAMES)
def test_an_errors_advice_names_the_settings_file_the_run_was_given(
        tmp_path_factory: pytest.TempPathFactory, name: bytes) -> None:
    """`ivle-maint --config FILE rollback` with no restore point: the
    command its error says to run (`see: ivle-maint ... status`), pasted,
    reads FILE too, whatever FILE's (printable) name; not only the resume line."""
    root = tmp_path_factory.mktemp("advice")
    for sub in ("state", "log", "backup", "run", "ivle"):
        (root / sub).mkdir()
    (root / "ivle" / "ivle.conf").write_text("")
    config = os.path.join(os.fsencode(root), name)
    with open(config, "w", encoding="utf-8") as out:
        out.write("[paths]\n" + "".join(f"{key} = {root / sub}\n" for key, sub in (
            ("ivle_conf_dir", "ivle"), ("state", "state"), ("log", "log"),
            ("backup", "backup"), ("run", "run"))))
    done = subprocess.run(
        [sys.executable, "-m", "ivle_maint", "--config", config, "rollback"],
        env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
        cwd=REPO, capture_output=True, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("ivle-maint: error:")]
    advice = line.split("(see: ", 1)[1].removesuffix(")")
    assert pasted(advice, "ivle-maint") == [[b"ivle-maint", b"--config", config, b"status"]], err
