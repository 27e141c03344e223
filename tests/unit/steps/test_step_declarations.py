"""What each of IVLE's steps declares beyond its action, and that nothing
else names a step or a role: a step's name is written once, in its module,
and a role's string once, in roles.Role."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ivle_maint.config import SETTINGS_SPEC, load_settings
from ivle_maint.context import PreflightStage, Role, downtime, select_steps
from ivle_maint.journal import Journal
from ivle_maint.procedure import STEPS
from ivle_maint.summary import summary_lines

# ivle-maint's own step declarations, no library's behaviour: Debian's suite only.
pytestmark = pytest.mark.once

PACKAGE = Path(__file__).resolve().parents[3] / "ivle_maint"
BY_NAME = {s.name: s for s in STEPS}


def test_role_predicates_say_which_node_does_what():
    assert [r for r in Role if r.runs_web] == [Role.SLAVE, Role.BOTH]
    assert [r for r in Role if r.runs_database] == [Role.MASTER, Role.BOTH]
    assert Role.BOTH.runs(Role.MASTER) and Role.BOTH.runs(Role.SLAVE)
    assert Role.SLAVE.runs("slave") and not Role.SLAVE.runs(Role.MASTER)
    assert Role("master") == "master"  # journals and the cluster table keep the string


def test_every_role_runs_its_own_steps_and_both_runs_all():
    both = select_steps(Role.BOTH, ("before", "after"), STEPS)
    master = select_steps(Role.MASTER, ("before", "after"), STEPS)
    slave = select_steps(Role.SLAVE, ("before", "after"), STEPS)
    assert both == list(STEPS)
    assert sorted(s.name for s in master + slave) == sorted(s.name for s in STEPS)


def test_the_web_server_is_down_from_stop_web_to_start_web():
    assert downtime(STEPS) == ("stop-web", "start-web")
    assert downtime([s for s in STEPS if s.name != "stop-web"]) is None


def test_the_steps_checks_run_in_the_preflights_order():
    order = [(stage.name, step.name, check.run.__name__)
             for stage in PreflightStage for step in STEPS
             for check in step.checks if check.stage == stage]
    assert order == [
        ("JAILS", "stop-consoles", "check_jail_mounts"),
        ("JAILS", "unmount-jails", "check_logins"),
        ("WEB", "stop-web", "check_maintenance"),
        ("WEB", "stop-web", "warn_first_requests"),
        ("WEB", "stop-web", "warn_unheld_listeners"),
        ("WEB", "restart-usrmgt", "check_new_postinst"),
        ("WEB", "start-web", "check_new_postinst"),
        ("JAIL_TREE", "rebuild-jail", "check_jail_tree"),
        ("JAIL_TREE", "remake-users", "check_users"),
        ("DATABASE", "migrate", "check_migrations"),
        ("DATABASE", "migrate", "check_way"),
        ("IVLE_CONF", "media-version", "check_media"),
        ("STATE_FILES", "migrate", "check_pins_record"),
        ("STATE_FILES", "rebuild-jail", "check_inputs_record"),
        ("STATE_FILES", "media-version", "check_media_record"),
        ("STATE_FILES", "start-web", "check_release_record"),
        ("CLUSTER", "leave-pool", "check_roll"),
        ("CLUSTER", "migrate", "check_roll"),
        ("CLUSTER", "media-version", "check_claim"),
    ]


def test_the_programs_each_step_runs(tmp_path: Path):
    conf = tmp_path / "ivle-maint.conf"
    conf.write_text("[jails]\nrun_mountallusers = yes\n")
    settings = load_settings(str(conf))
    programs = {s.name: s.programs(settings) for s in STEPS if s.programs is not None}
    assert programs == {"unmount-jails": ["ivle-mountallusers"],
                        "rebuild-jail": ["ivle-buildjail"], "remake-users": ["ivle-remakeuser"]}
    conf.write_text("[jails]\nrun_mountallusers = no\n")
    assert BY_NAME["unmount-jails"].programs(load_settings(str(conf))) == []  # type: ignore[misc]


def test_the_summary_shows_each_steps_metrics_in_the_summarys_order(tmp_path: Path):
    journal = Journal.open(tmp_path, "1.0", "1.1", "both")
    recorded = {
        "stop-web": {}, "stop-consoles": {"consoles_stopped": 4, "killed": 1},
        "unmount-jails": {"jails_unmounted": 2}, "baseline": {"baselined": 3},
        "migrate": {"migrations_applied": ["20240101-01", "20240102-01"]},
        "rebuild-jail": {}, "remake-users": {"rebuilt": 5},
        "media-version": {"media_old": "", "media_new": "1.1-1"},
        "restart-usrmgt": {}, "start-web": {},
    }
    for name, metrics in recorded.items():
        journal.begin(name)
        journal.finish(name, "ok", metrics)
    journal.set_state("complete")
    lines = summary_lines(journal, STEPS)
    assert lines[0] == "upgrade 1.0 -> 1.1: complete"
    assert lines[1].startswith("  web service down for ")
    assert lines[2:] == [
        "  migrations applied: 2 20240101-01 20240102-01",
        "  consoles stopped: 4",
        "  jail mounts unmounted: 2",
        "  user jails rebuilt: 5",
        "  jail template rebuilt",
        "  media version: (unset) -> 1.1-1",
    ]


def test_a_step_not_done_shows_only_what_it_recorded_and_its_status(tmp_path: Path):
    journal = Journal.open(tmp_path, "1.0", "1.1", "both")
    journal.begin("migrate")
    journal.finish("migrate", "ok", {"migrations_applied": []})
    journal.begin("rebuild-jail")
    journal.fail("rebuild-jail", "ivle-buildjail failed")
    assert summary_lines(journal, STEPS)[1:] == [
        "  migrations applied: 0",
        "  rebuild-jail: failed: ivle-buildjail failed",
    ]


def test_skipped_steps_are_shown_as_such_and_the_web_server_as_not_stopped(tmp_path: Path):
    journal = Journal.open(tmp_path, "1.1", "1.1", "both")
    for name in ("stop-web", "rebuild-jail", "media-version"):
        journal.begin(name)
        journal.finish(name, "skipped: same files", {"skipped": "same files"})
    journal.begin("start-web")
    journal.finish("start-web", "apache2: reloaded", {})
    journal.set_state("complete")
    assert summary_lines(journal, STEPS)[1:] == [
        "  web service not stopped (reloaded on the new code)",
        "  stop-web: skipped: same files",
        "  rebuild-jail: skipped: same files",
        "  media-version: skipped: same files",
    ]


def string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module but its docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    # A command line's words (gates.text.ivle_maint('db', 'baseline', ...)):
    # subcommands, not step names.
    command_words = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ivle_maint"
                     for arg in node.args}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and id(node) not in command_words]


# The same words, meaning something else: the command line's subcommands
# (`ivle-maint db baseline|migrate`, `jails remake-users`) and a migration's
# mode in the marker table.
SAME_WORD_OTHER_MEANING = {
    ("commands/db.py", "baseline"), ("commands/db.py", "migrate"),
    ("commands/jails.py", "remake-users"), ("db/marker.py", "baseline"),
}


def test_a_steps_name_is_written_only_in_its_own_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for line, value in string_constants(path):
            step = BY_NAME.get(value)
            if step is None or (where, value) in SAME_WORD_OTHER_MEANING:
                continue
            if where != f"steps/{value.replace('-', '_')}.py":
                found.append(f"{where}:{line}: {value!r}")
    assert not found, "step names outside their module: " + "; ".join(found)


@pytest.mark.parametrize("word", [r.value for r in Role])
def test_a_roles_string_is_written_only_in_its_enum(word: str):
    found = [f"{path.relative_to(PACKAGE)}:{line}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "roles.py"
             for line, value in string_constants(path) if value == word]
    assert not found, f"{word!r} outside roles.Role: " + ", ".join(found)


def test_the_settings_offer_exactly_the_roles_and_read_one_as_a_role(tmp_path: Path):
    spec = next(line for line in SETTINGS_SPEC.splitlines() if line.startswith("role = "))
    offered = re.findall(r"'(\w+)'", spec.split("default=")[0])
    assert offered == [r.value for r in Role]
    conf = tmp_path / "ivle-maint.conf"
    conf.write_text("[node]\nrole = slave\n")
    assert load_settings(str(conf)).role is Role.SLAVE
