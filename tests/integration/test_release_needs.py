"""A release gets only what it needs (release_needs.py), on sandbox nodes
with a real PostgreSQL server, real mounts, processes and services.

dpkg's part is what it really leaves for a preinst (verified on a real dpkg
run, and by tests/booted): the installed package's md5sums in
$DPKG_ADMINDIR/info/ivle.md5sums, the new package's control and md5sums in
$DPKG_ADMINDIR/tmp.ci/, and DPKG_MAINTSCRIPT_NAME=preinst.  The lists
describe a package whose files the tests choose: each kind (code, static
media, migrations, docs) changes or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from ivle_sandbox.confs import update_fakes_conf
from ivle_sandbox.releases import NEW, OLD, RELEASES
from support.source_tree import source_tree
from support.upgrade_helpers import (
    OLD_KEYS,
    at_version_1_0,
    cli,
    journal,
    marker_keys,
    media_version,
    postinst,
    preinst,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

SKIPPED_ON_REINSTALL = {"stop-web", "stop-consoles", "unmount-jails", "migrate",
                        "rebuild-jail", "remake-users", "media-version", "restart-usrmgt"}


def package(version: str, *, code: str = "", media: str = "", doc: str = "",
            migrations: tuple[str, ...] = ()) -> dict[str, str]:
    """An md5sums list of IVLE VERSION; CODE, MEDIA, DOC: what makes that kind's
    files differ from another build of the same version."""
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()
    files = {
        "usr/lib/ivle/ivle/__init__.py": md5(f"code {version} {code}"),
        "usr/lib/ivle/ivle/webapp/console/media/console.js": md5(f"media {version} {media}"),
        "usr/share/doc/ivle/changelog.gz": md5(f"doc {version} {doc}"),
        "etc/apache2/sites-available/ivle.conf": md5("site"),
    }
    for name in migrations:
        files[f"usr/share/ivle/userdb/migrations/{name}"] = md5(name)
    return files


OLD_FILES = tuple(sorted(OLD))


def v10() -> dict[str, str]:
    return package("1.0", migrations=OLD_FILES)


def v11(**kinds: str) -> dict[str, str]:
    return package("1.1", migrations=(*OLD_FILES, *sorted(NEW)), **kinds)


class Dpkg:
    """A dpkg admin directory as dpkg leaves it for IVLE's preinst."""

    def __init__(self, top: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.top = top
        (top / "info").mkdir(parents=True)
        (top / "tmp.ci").mkdir()
        monkeypatch.setenv("DPKG_ADMINDIR", str(top))
        monkeypatch.setenv("DPKG_MAINTSCRIPT_PACKAGE", "ivle")
        self.monkeypatch = monkeypatch

    @staticmethod
    def _lines(files: dict[str, str]) -> str:
        return "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))

    def installed(self, files: dict[str, str]) -> None:
        (self.top / "info" / "ivle.md5sums").write_text(self._lines(files))

    def preinst(self, node, old: str, new: str, files: dict[str, str]):
        (self.top / "tmp.ci" / "control").write_text(
            f"Package: ivle\nVersion: {new}\nArchitecture: all\n")
        (self.top / "tmp.ci" / "md5sums").write_text(self._lines(files))
        self.monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
        try:
            return preinst(node, old, new)
        finally:
            self.monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "postinst")

    def upgrade(self, node, old: str, new: str, files: dict[str, str],
                migrations: dict[str, str] | None = None) -> str:
        """preinst, unpack (the new list becomes dpkg's record), postinst."""
        done = self.preinst(node, old, new, files)
        assert done.returncode == 0, done.stdout + done.stderr
        unpack(node, new, migrations)
        self.installed(files)
        done = postinst(node, old, new)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr


@pytest.fixture
def dpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dpkg:
    return Dpkg(tmp_path / "dpkg", monkeypatch)


@pytest.fixture
def upgraded(node_factory, dpkg: Dpkg):
    """A node of role both at 1.0, upgraded to 1.1 through the lists: the
    jail is rebuilt and its inputs recorded."""
    node = at_version_1_0(node_factory(users=3, consoles=2, role="both"))
    dpkg.installed(v10())
    dpkg.upgrade(node, "1.0", "1.1", v11())
    assert media_version(node) == "1.1"
    assert json.loads((node.state_dir / "jail-inputs.json").read_text())["files"]
    return node


def mark_jails(node) -> list[Path]:
    """Files a jail rebuild (rsync --delete) and a user-jail remake would remove."""
    marks = [node.template / "rebuild-mark", node.jails_src / "user0001" / "remake-mark"]
    for mark in marks:
        mark.write_text("untouched\n")
    return marks


# Skipped unless the release rolls (roll/choice.py), which a node of its own never does.
ROLL_STEPS = {"leave-pool", "join-pool"}


def steps_skipped(node, old: str, new: str) -> set[str]:
    return {name for name, record in journal(node, old, new)["steps"].items()
            if "skipped" in record["metrics"] and name not in ROLL_STEPS}


def test_reinstall_of_the_same_files_keeps_the_site_up_and_rebuilds_nothing(upgraded, dpkg):
    node = upgraded
    marks = mark_jails(node)
    consoles, mounts = node.console_pids(), len(node.mounts())
    dumps = sorted(p.name for p in node.backup_dir.glob("*.dump"))
    events = len(node.service_events())

    done = dpkg.preinst(node, "1.1", "1.1", v11())
    assert done.returncode == 0, done.stderr
    # Between dpkg's scripts: nothing stopped, killed or unmounted.
    assert node.service_running("apache2") and node.console_pids() == consoles
    assert len(node.mounts()) == mounts
    unpack(node, "1.1")
    done = postinst(node, "1.1", "1.1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr

    assert all(mark.exists() for mark in marks)  # no rebuild, no remake
    assert media_version(node) == "1.1"  # no bump
    assert sorted(p.name for p in node.backup_dir.glob("*.dump")) == dumps
    new_events = [(s, e.split()[0]) for _, s, e in node.service_events()[events:]]
    assert new_events == [("apache2", "reload")]  # graceful; usrmgt untouched
    assert node.console_pids() == consoles
    assert steps_skipped(node, "1.1", "1.1") == SKIPPED_ON_REINSTALL
    assert "web service not stopped (reloaded on the new code)" in out
    assert "  rebuild-jail: skipped: the jail's inputs are those of the last rebuild" in out
    assert "  media-version: skipped: neither the version nor a static file changes" in out


def test_a_changed_jail_input_rebuilds_and_takes_the_site_down(upgraded, dpkg):
    marks = mark_jails(upgraded)
    dpkg.preinst(upgraded, "1.1", "1.1", v11(code="rebuilt"))
    assert not upgraded.service_running("apache2")  # the full procedure
    unpack(upgraded, "1.1")
    dpkg.installed(v11(code="rebuilt"))
    assert postinst(upgraded, "1.1", "1.1").returncode == 0
    assert not any(mark.exists() for mark in marks)
    # The same version and static files: no media bump all the same.
    assert media_version(upgraded) == "1.1"
    assert steps_skipped(upgraded, "1.1", "1.1") == {"media-version"}


def test_changed_static_files_only_bump_the_media_version_without_an_outage(upgraded, dpkg):
    marks = mark_jails(upgraded)
    dpkg.preinst(upgraded, "1.1", "1.1", v11(media="new css", doc="new changelog"))
    assert upgraded.service_running("apache2")
    unpack(upgraded, "1.1")
    dpkg.installed(v11(media="new css", doc="new changelog"))  # as dpkg's unpack records it
    assert postinst(upgraded, "1.1", "1.1").returncode == 0
    assert all(mark.exists() for mark in marks)
    assert media_version(upgraded) == "1.1.r2"
    assert "media-version" not in steps_skipped(upgraded, "1.1", "1.1")
    assert "rebuild-jail" in steps_skipped(upgraded, "1.1", "1.1")


def test_a_release_without_migrations_takes_no_dump(node_factory, dpkg):
    """1.0 -> 1.1 whose code changes but ships no new migration: the full
    procedure (the jail changes), and no pg_dump."""
    node = at_version_1_0(node_factory(users=2, consoles=0, role="both"))
    dpkg.installed(v10())
    files = package("1.1", migrations=OLD_FILES)
    out = dpkg.upgrade(node, "1.0", "1.1", files, migrations={})
    assert not list(node.backup_dir.glob("*.dump"))
    assert marker_keys(node) == OLD_KEYS
    assert "migrations applied: 0" in out and "web service down for" in out


def test_forcing_the_full_procedure_skips_nothing(upgraded, dpkg, monkeypatch):
    monkeypatch.setenv("IVLE_MAINT_FULL_PROCEDURE", "1")
    marks = mark_jails(upgraded)
    dpkg.upgrade(upgraded, "1.1", "1.1", v11())
    assert steps_skipped(upgraded, "1.1", "1.1") == set(), journal(upgraded, "1.1", "1.1")["needs"]
    assert not any(mark.exists() for mark in marks) and media_version(upgraded) == "1.1.r2"


def test_a_rerun_after_a_kill_in_the_after_phase_skips_the_same_steps(upgraded, dpkg,
                                                                       monkeypatch):
    """The decision is the preinst's: a rerun, without the new package's
    control files (which alone would mean the full procedure), skips
    exactly what it did, its basis proved against dpkg's record of the
    unpacked package (release_needs.confirm)."""
    update_fakes_conf(upgraded.fakes_conf, "apache2", {"delay": 10})  # killed in the reload
    dpkg.preinst(upgraded, "1.1", "1.1", v11())
    decided = journal(upgraded, "1.1", "1.1")["needs"]
    unpack(upgraded, "1.1")
    dpkg.installed(v11())  # as dpkg's unpack records it
    (dpkg.top / "tmp.ci").rename(dpkg.top / "tmp.ci.gone")  # dpkg removes it after the preinst
    proc = start_cli(upgraded, "hook", "--package-version", "1.1", "postinst", "configure",
                     "1.1")
    while journal(upgraded, "1.1", "1.1")["steps"].get("start-web", {}).get("status") \
            != "running":
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    update_fakes_conf(upgraded.fakes_conf, "apache2", {"delay": None})
    done = cli(upgraded, "rerun")
    assert done.returncode == 0, done.stdout + done.stderr
    record = journal(upgraded, "1.1", "1.1")
    assert record["needs"] == decided and record["state"] == "complete"
    assert steps_skipped(upgraded, "1.1", "1.1") == SKIPPED_ON_REINSTALL
    assert upgraded.service_running("apache2")


def test_plan_names_each_step_a_reinstall_skips_and_why(upgraded, dpkg, monkeypatch):
    # `plan` decides as the preinst will, from the lists dpkg gives it.
    (dpkg.top / "tmp.ci" / "control").write_text("Package: ivle\nVersion: 1.1\n")
    (dpkg.top / "tmp.ci" / "md5sums").write_text(dpkg._lines(v11()))
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    done = cli(upgraded, "plan", "--from", "1.1", "--to", "1.1")
    assert done.returncode == 0, done.stderr
    skips = [line for line in done.stdout.splitlines() if line.startswith("skip ")]
    up = "the site stays up (no migrations; the jail's inputs are those of the last rebuild)"
    assert skips == [
        f"skip stop-web: {up}", f"skip stop-consoles: {up}", f"skip unmount-jails: {up}",
        f"skip migrate: {up}",
        "skip rebuild-jail: the jail's inputs are those of the last rebuild",
        "skip remake-users: the jail's inputs are those of the last rebuild",
        "skip restart-usrmgt: its code does not change",
        "skip media-version: neither the version nor a static file changes",
    ]
    assert journal(upgraded, "1.1", "1.1") == {}  # the plan changes nothing

    (dpkg.top / "tmp.ci" / "md5sums").write_text(dpkg._lines(v11(code="changed")))
    done = cli(upgraded, "plan", "--from", "1.1", "--to", "1.1")
    skips = [line for line in done.stdout.splitlines() if line.startswith("skip ")]
    assert skips == ["skip media-version: neither the version nor a static file changes"]


def test_a_source_reinstall_of_the_same_tree_keeps_the_site_up_and_the_jail(node_factory):
    """upgrade --source: the tree's files against the last rebuild's; the
    database says nothing is pending; OLD's files are not known, so the
    media version changes and usrmgt restarts."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    first = cli(node, "upgrade", "--from", "1.0", "--source", str(tree))
    assert first.returncode == 0, first.stdout + first.stderr
    marks = mark_jails(node)
    events = len(node.service_events())
    again = cli(node, "upgrade", "--from", "1.1", "--source", str(tree))
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(mark.exists() for mark in marks)
    assert steps_skipped(node, "1.1", "1.1") == {"stop-web", "stop-consoles", "unmount-jails",
                                                 "migrate", "rebuild-jail", "remake-users"}
    assert [(s, e.split()[0]) for _, s, e in node.service_events()[events:]] == [
        ("ivle-usrmgt-server", "stop"), ("ivle-usrmgt-server", "start"), ("apache2", "reload")]
    assert media_version(node) == "1.1.r2"

    (tree / "ivle").mkdir()
    (tree / "ivle" / "console.py").write_text("# changed\n")  # a file that goes into the jail
    # (1.1 -> 1.1 is complete: the CLI leaves a finished upgrade alone.)
    cli(node, "upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree), check=True)
    assert not any(mark.exists() for mark in marks)
    assert "rebuild-jail" not in steps_skipped(node, "1.1", "1.1.1")


def edit_jail_setting(node, key: str, value: str) -> None:
    """The administrator edits ivle.conf's [jail] (comments kept)."""
    from configobj import ConfigObj
    conf = ConfigObj(str(node.ivle_conf))
    conf["jail"][key] = value
    conf.write()


def test_a_rebuild_records_the_settings_it_was_built_from_not_the_decisions(upgraded, dpkg):
    """The rebuild fails; the administrator changes [jail] suite and reruns:
    the template is built from the new suite.  Put back, the old suite must
    not pass for the template's."""
    update_fakes_conf(upgraded.fakes_conf, "ivle-buildjail", {"fail": True})
    dpkg.preinst(upgraded, "1.1", "1.1", v11(code="rebuilt"))
    unpack(upgraded, "1.1")
    dpkg.installed(v11(code="rebuilt"))
    assert postinst(upgraded, "1.1", "1.1").returncode != 0
    edit_jail_setting(upgraded, "suite", "trixie")
    update_fakes_conf(upgraded.fakes_conf, "ivle-buildjail", {"fail": None})
    done = cli(upgraded, "rerun")
    assert done.returncode == 0, done.stdout + done.stderr
    assert journal(upgraded, "1.1", "1.1")["state"] == "complete"

    edit_jail_setting(upgraded, "suite", "bookworm")  # as when the upgrade decided
    marks = mark_jails(upgraded)
    dpkg.upgrade(upgraded, "1.1", "1.1", v11(code="rebuilt"))
    assert "rebuild-jail" not in steps_skipped(upgraded, "1.1", "1.1")
    assert not any(mark.exists() for mark in marks)


# ---------------------------------------------------- the decision's basis
# A decision holds only for the release it was made from (release_needs.confirm).
# Each case changes one input of the release between the run that decided
# and the run that goes on (a rerun of `upgrade --source` after the tree
# was fixed; dpkg's postinst after an unpack that changed what md5sums do
# not list: a conffile, a symlink, a mode): the step that input feeds runs.

NEW_MIGRATION = "20100301-01.sql"


def _new_migration(tree: Path) -> None:
    (tree / "userdb" / "migrations" / NEW_MIGRATION).write_text(
        "CREATE TABLE rerun_audit (id serial PRIMARY KEY);\n")


def _code(tree: Path) -> Path:
    code = tree / "ivle" / "console.py"
    code.parent.mkdir(exist_ok=True)
    if not code.exists():
        code.write_text("# the console\n")
    return code


# One input of a source tree changed between the two runs, and what it must bring.
SOURCE_CHANGES = {
    "a new migration": (_new_migration, "migrate"),
    "a file's content": (lambda tree: _code(tree).write_text("# fixed\n"), "rebuild-jail"),
    "a file's mode": (lambda tree: _code(tree).chmod(0o755), "rebuild-jail"),
    "a symlink's target": (lambda tree: (tree / "ivle" / "current").unlink() or
                           (tree / "ivle" / "current").symlink_to("console.py"),
                           "rebuild-jail"),
    "a symlink to a directory": (lambda tree: (tree / "ivle" / "lib").symlink_to("../userdb"),
                                 "rebuild-jail"),
}


@pytest.mark.parametrize("change", sorted(SOURCE_CHANGES))
def test_a_rerun_of_upgrade_source_decides_from_the_tree_it_installs(node_factory, change):
    """The first run decides the tree needs nothing (the last rebuild's
    inputs, nothing pending) and fails; the administrator changes the tree
    and runs the same command again, which installs the tree as it is now:
    what the change needs runs, nothing is skipped on the first run's word."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    _code(tree)
    (tree / "ivle" / "current").symlink_to("nothing-yet")
    cli(node, "upgrade", "--from", "1.0", "--source", str(tree), check=True)

    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": "start"})
    command = ["upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree)]
    first = cli(node, *command)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "stop-web" in steps_skipped(node, "1.1", "1.1.1")  # the site stayed up

    make_change, needed = SOURCE_CHANGES[change]
    make_change(tree)
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": None})
    marks = mark_jails(node)
    again = cli(node, *command)
    assert again.returncode == 0, again.stdout + again.stderr
    record = journal(node, "1.1", "1.1.1")
    assert record["state"] == "complete"
    assert steps_skipped(node, "1.1", "1.1.1") == set(), record["needs"]
    if needed == "migrate":
        assert NEW_MIGRATION.removesuffix(".sql") in marker_keys(node)
    else:
        assert not any(mark.exists() for mark in marks)
    assert "the release's inputs changed since the decision" in again.stderr + again.stdout


def test_a_rerun_of_upgrade_source_with_the_same_tree_keeps_the_decision(node_factory):
    """The control: nothing changed, so the rerun skips what the first run did."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    cli(node, "upgrade", "--from", "1.0", "--source", str(tree), check=True)
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": "start"})
    command = ["upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree)]
    assert cli(node, *command).returncode == 1
    skipped = steps_skipped(node, "1.1", "1.1.1")
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": None})
    marks = mark_jails(node)
    cli(node, *command, check=True)
    assert steps_skipped(node, "1.1", "1.1.1") == skipped
    assert all(mark.exists() for mark in marks)


def test_a_rerun_after_ivle_conf_jail_changed_rebuilds(node_factory):
    """[jail] changed between the failed run and its rerun: the jail it feeds is rebuilt."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    cli(node, "upgrade", "--from", "1.0", "--source", str(tree), check=True)
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": "start"})
    command = ["upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree)]
    assert cli(node, *command).returncode == 1
    edit_jail_setting(node, "suite", "trixie")
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": None})
    marks = mark_jails(node)
    cli(node, *command, check=True)
    assert "rebuild-jail" not in steps_skipped(node, "1.1", "1.1.1")
    assert not any(mark.exists() for mark in marks)


# ------------------------------------------------------- what md5sums leave out


class Package:
    """The installed entries dpkg's md5sums do not describe, under the node's
    root: a conffile (the usrmgt init script), a symlink and a program."""

    def __init__(self, node, dpkg: Dpkg) -> None:
        self.root = node.root / "pkg"
        self.conffile = self.root / "etc" / "init.d" / "ivle-usrmgt-server"
        self.link = self.root / "usr" / "lib" / "ivle" / "ivle" / "current"
        self.program = self.root / "usr" / "lib" / "ivle" / "bin" / "ivle-tool"
        for path in (self.conffile, self.link, self.program):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.conffile.write_text("#!/bin/sh\n# the init script\n")
        self.link.symlink_to("console.py")
        self.program.write_text("#!/bin/sh\n")
        self.program.chmod(0o755)
        info = dpkg.top / "info"
        entries = [self.root, *self.root.rglob("*")]
        (info / "ivle.list").write_text("".join(f"{p}\n" for p in entries))
        (info / "ivle.conffiles").write_text(f"{self.conffile}\n")


# One entry md5sums do not list changed by the unpack, and what it must bring.
PACKAGE_CHANGES = {
    "a conffile's content": (lambda p: p.conffile.write_text("#!/bin/sh\n# new\n"),
                             {"restart-usrmgt", "rebuild-jail"}),
    "a symlink's target": (lambda p: p.link.unlink() or p.link.symlink_to("shell.py"),
                           {"restart-usrmgt", "rebuild-jail"}),
    "a program's mode": (lambda p: p.program.chmod(0o644), {"restart-usrmgt", "rebuild-jail"}),
    "nothing": (lambda p: None, set()),
}


@pytest.mark.parametrize("change", sorted(PACKAGE_CHANGES))
def test_the_postinst_proves_what_md5sums_do_not_list(node_factory, dpkg, change):
    """A reinstall whose md5sums are the installed ones: the preinst keeps
    the site up; the unpack changed an entry md5sums leave out, so the
    postinst takes the full procedure (a control: with nothing changed it
    keeps the preinst's decision)."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    dpkg.installed(v10())
    dpkg.upgrade(node, "1.0", "1.1", v11())
    package = Package(node, dpkg)

    done = dpkg.preinst(node, "1.1", "1.1", v11())
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.service_running("apache2")  # decided: the site stays up
    make_change, needed = PACKAGE_CHANGES[change]
    make_change(package)
    unpack(node, "1.1")
    marks = mark_jails(node)
    done = postinst(node, "1.1", "1.1")
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = steps_skipped(node, "1.1", "1.1")
    assert not needed & skipped, journal(node, "1.1", "1.1")["needs"]
    if needed:
        assert not any(mark.exists() for mark in marks)
    else:
        assert "rebuild-jail" in skipped and all(mark.exists() for mark in marks)
    assert os.path.exists(package.conffile)


@pytest.mark.parametrize("change", sorted(c for c, (_, needed) in SOURCE_CHANGES.items()
                                          if needed == "rebuild-jail"))
def test_a_rebuild_vouches_only_for_the_tree_that_was_installed(node_factory, change):
    """upgrade --source fails in rebuild-jail; the administrator changes the
    tree and continues with `ivle-maint rerun`, which installs nothing: the
    jail is built from the installed code, the first tree's.  The record
    must not name the changed tree, or the next `upgrade --source` of it
    would skip the rebuild its code needs."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    _code(tree)
    (tree / "ivle" / "current").symlink_to("nothing-yet")
    update_fakes_conf(node.fakes_conf, "ivle-buildjail", {"fail": True})
    assert cli(node, "upgrade", "--from", "1.0", "--source", str(tree)).returncode == 1
    SOURCE_CHANGES[change][0](tree)
    update_fakes_conf(node.fakes_conf, "ivle-buildjail", {"fail": None})
    cli(node, "rerun", check=True)
    assert journal(node)["state"] == "complete"

    marks = mark_jails(node)
    cli(node, "upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree), check=True)
    assert "rebuild-jail" not in steps_skipped(node, "1.1", "1.1.1")
    assert not any(mark.exists() for mark in marks)


def test_a_rebuild_vouches_only_for_the_package_that_was_unpacked(node_factory, dpkg):
    """The preinst decided from one build of 1.1 (nothing to skip: the full
    procedure); dpkg unpacked another (its md5sums differ).  The jail is
    built from what was unpacked: the record must not name the first
    build, or a later install of it would keep a jail of the other's code."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    dpkg.installed(v10())
    assert dpkg.preinst(node, "1.0", "1.1", v11(code="first build")).returncode == 0
    unpack(node, "1.1")
    dpkg.installed(v11(code="second build"))
    done = postinst(node, "1.0", "1.1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert steps_skipped(node, "1.0", "1.1") == set()

    marks = mark_jails(node)
    dpkg.upgrade(node, "1.1", "1.1", v11(code="first build"))
    assert "rebuild-jail" not in steps_skipped(node, "1.1", "1.1")
    assert not any(mark.exists() for mark in marks)


def test_a_rerun_asks_the_database_again_when_the_site_stayed_up_on_its_word(node_factory):
    """upgrade --source: the database held every migration of the tree, so
    the site stayed up; the run failed, and the administrator restored an
    older dump (one migration not applied) before running the same command
    again: the migration is applied, with the outage IVLE's procedure takes."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    tree = source_tree(node, RELEASES["1.1"])
    cli(node, "upgrade", "--from", "1.0", "--source", str(tree), check=True)
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": "start"})
    command = ["upgrade", "--from", "1.1", "--to", "1.1.1", "--source", str(tree)]
    assert cli(node, *command).returncode == 1
    assert "migrate" in steps_skipped(node, "1.1", "1.1.1")

    conn = node.connect()  # the older dump, restored: 20100215 never applied
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE upgrade_audit")
            cur.execute("DELETE FROM ivle_maint_migrations WHERE key = '20100215'")
        conn.commit()
    finally:
        conn.close()
    update_fakes_conf(node.fakes_conf, "ivle-usrmgt-server", {"fail": None})
    cli(node, *command, check=True)
    assert "20100215" in marker_keys(node)
    assert "migrate" not in steps_skipped(node, "1.1", "1.1.1")
