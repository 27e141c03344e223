"""The schema hold's rule and its systemd drop-in (gates/schema_hold.py)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.config import Settings, load_settings
from ivle_maint.gates import schema_hold
from ivle_maint.journal import ABORTED, ABORTING, COMPLETE, IN_PROGRESS, Journal, StepRecord

STATES = (IN_PROGRESS, ABORTING, COMPLETE, ABORTED)
STEP_NAMES = ("stop-web", "stop-consoles", "unmount-jails", "migrate", "start-web")


def settings_with(tmp_path: Path, text: str = "") -> Settings:
    path = tmp_path / "maint.conf"
    path.write_text(f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"[web]\napache_dir = {tmp_path / 'apache2'}\n{text}")
    return load_settings(str(path))


journals = st.lists(
    st.tuples(st.sampled_from(STATES),
              st.dictionaries(st.sampled_from(STEP_NAMES),
                              st.sampled_from(("running", "done", "failed")), max_size=5)),
    max_size=4)


def make(i: int, state: str, steps: dict[str, str]) -> Journal:
    journal = Journal(Path(f"/state/journal/1.{i}_to_1.{i + 1}.json"), f"1.{i}", f"1.{i + 1}",
                      "slave", state=state, created=1000.0 + i)
    journal.steps = {name: StepRecord(status, 1.0) for name, status in steps.items()}
    return journal


@settings(max_examples=200, deadline=None)
@given(journals, st.integers(min_value=-1, max_value=4))
def test_an_unfinished_journal_holds_unless_its_own_start_web_released_it(found, pick):
    made = [make(i, state, steps) for i, (state, steps) in enumerate(found)]
    released = schema_hold.upgrade_key(made[pick]) if 0 <= pick < len(made) else ""
    hold = schema_hold.decide(made, released)
    unreleased = [j for j in made if j.state in (IN_PROGRESS, ABORTING)
                  and schema_hold.upgrade_key(j) != released]
    if unreleased:
        assert hold is not None and (hold.old, hold.new) == (unreleased[0].old,
                                                             unreleased[0].new)
        assert "\n" not in hold.describe()
    else:
        assert hold is None


def test_a_reinstall_of_the_same_versions_is_not_released_by_the_last_one():
    first = make(0, COMPLETE, {"start-web": "done"})
    again = make(0, IN_PROGRESS, {"stop-web": "done"})
    again.created += 60
    assert schema_hold.decide([again], schema_hold.upgrade_key(first)) is not None


def test_dropin_runs_the_check_with_this_nodes_settings(tmp_path):
    s = settings_with(tmp_path)
    text = schema_hold.dropin_text(s)
    assert "[Service]\n" in text
    line = next(x for x in text.splitlines() if x.startswith("ExecStartPre="))
    assert line.endswith(f"--config {tmp_path / 'maint.conf'} hold check")
    assert not line.startswith("ExecStartPre=-")  # a failing check fails the start


def test_systemd_quoting_of_odd_paths():
    assert schema_hold._quote("/a b/c%d") == '"/a b/c%%d"'
    assert schema_hold._quote('x"y') == '"x\\"y"'
    assert schema_hold._quote("/usr/sbin/ivle-maint") == "/usr/sbin/ivle-maint"


def _runs(text: str, char: str) -> list[int]:
    return [len(run) for run in re.findall(f"{re.escape(char)}+", text)]


@settings(max_examples=200, deadline=None)
@given(arg=st.text(st.sampled_from("ab/ .$%{}\"';\\\t-"), min_size=1, max_size=16))
def test_systemd_sees_each_argument_as_it_was_given(arg):
    """systemd.service(5): `%` starts a specifier and `$` a variable in
    ExecStartPre, `%%` and `$$` are themselves; in double quotes a backslash
    escapes.  Before, `$` was left as it was: a settings path holding
    `${X}` was expanded by systemd, and the hold check read another file."""
    word = schema_hold._quote(arg)
    assert all(n % 2 == 0 for n in _runs(word, "%") + _runs(word, "$"))
    if word.startswith('"'):
        assert word.endswith('"') and len(word) >= 2
        inner = re.sub(r"\\(.)", r"\1", word[1:-1])
    else:
        assert not any(c in word for c in " \t\"'\\;")
        inner = word
    assert inner.replace("%%", "%").replace("$$", "$") == arg


def test_install_and_release_are_idempotent_and_leave_other_dropins(tmp_path):
    s = settings_with(tmp_path)
    units = tmp_path / "units"
    path = schema_hold.dropin_path(s, units)
    assert schema_hold.install(s, unit_dir=units, systemd=False).startswith(
        "schema hold on (no systemd")
    assert not path.exists()
    for _ in range(2):
        assert schema_hold.install(s, unit_dir=units, systemd=True) == f"schema hold on ({path})"
    assert path.read_text() == schema_hold.dropin_text(s)
    other = path.parent / "local.conf"
    other.write_text("[Service]\n")
    assert "removed" in schema_hold.release(s, None, unit_dir=units, systemd=True)[0]
    assert not path.exists() and other.exists()
    assert schema_hold.release(s, None, unit_dir=units, systemd=True) == ("schema hold off",
                                                                           None)


def test_a_sandbox_driving_its_own_init_scripts_never_gets_a_dropin(tmp_path, monkeypatch):
    monkeypatch.setattr(schema_hold.os.path, "isdir", lambda p: p == "/run/systemd/system")
    own = settings_with(tmp_path, f"[services]\nbackend = init.d\ninitd_dir = {tmp_path}\n")
    assert not schema_hold.systemd_manages(own)
    system_scripts = settings_with(tmp_path, "[services]\nbackend = init.d\n")
    assert schema_hold.systemd_manages(system_scripts)
    assert schema_hold.systemd_manages(settings_with(tmp_path))


def test_the_hold_names_the_step_by_the_order_begun_not_by_time_or_name():
    """The wall times say otherwise (a clock set back between the steps)."""
    journal = make(0, IN_PROGRESS, {})
    journal.steps = {"stop-web": StepRecord("done", 9.0, order=1),
                     "baseline": StepRecord("done", 1.0, order=3),
                     "unmount-jails": StepRecord("done", 5.0, order=2)}
    assert schema_hold._where(journal) == "after baseline"
    journal.steps["migrate"] = StepRecord("failed", 0.5, order=4)
    assert schema_hold._where(journal) == "migrate failed"
