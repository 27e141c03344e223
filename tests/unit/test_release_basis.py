"""A decision holds only for the release it was made from (release_needs.confirm).

Generated releases, as real files: a source tree, or a package as dpkg
leaves it (md5sums, its list, its conffiles, the entries on disk).  One
input of any kind changes between the run that decided and the run that
goes on: a file's content or mode, a symlink's target, a new or removed
file or symlink, a conffile, a migration, ivle.conf's [jail].  Whatever
the decision said, no step stays skipped whose input changed; with
nothing changed, the decision stands.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint import release_needs as rn
from ivle_maint.context import Role
from ivle_maint.journal import Journal, StepRecord, StepStatus

NEEDS = (rn.OUTAGE, rn.MIGRATIONS, rn.JAIL, rn.MEDIA, rn.USRMGT)
# The steps each need lets skip (the steps' skip_why).
STEPS = {"stop-web": rn.OUTAGE, "stop-consoles": rn.OUTAGE, "unmount-jails": rn.OUTAGE,
         "migrate": rn.OUTAGE, "rebuild-jail": rn.JAIL, "remake-users": rn.JAIL,
         "media-version": rn.MEDIA, "restart-usrmgt": rn.USRMGT}
# The model: what a change of a file of each kind feeds (IVLE's facts, not classify()).
FEEDS = {"code": {rn.OUTAGE, rn.JAIL, rn.USRMGT}, "media": {rn.MEDIA},
         "migration": {rn.OUTAGE, rn.MIGRATIONS}, "doc": set(),
         "settings": {rn.OUTAGE, rn.JAIL}}


class Reporter:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


class SlaveSettings(dict[str, Any]):
    role = Role.SLAVE


def ivle_conf(suite: str, changed: str = "") -> Any:
    """ivle.conf as IVLE's defaults fill it in; CHANGED ("paths/lib"): that key edited."""
    conf: dict[str, Any] = {
        "jail": {"suite": suite, "mirror": "http://deb.example/debian", "devmode": "False"},
        "paths": {"prefix": "/usr", "data": "/var/lib/ivle", "share": "/usr/share/ivle",
                  "lib": "/usr/lib/ivle",
                  "jails": {"mounts": "/var/lib/ivle/jailmounts", "src": "/var/lib/ivle/jails",
                            "template": "/var/lib/ivle/jails/__base__",
                            "template_build": "/var/lib/ivle/jails/__base_build__"}}}
    if changed:
        *sections, key = changed.split("/")
        where = conf
        for name in sections:
            where = where[name]
        where[key] = where[key] + "-edited"
    return SimpleNamespace(conf=conf)


# Every key of ivle.conf that feeds the jail (the template or the users' jails).
JAIL_KEYS = ["jail/suite", "jail/mirror", "jail/devmode", "paths/prefix", "paths/data",
             "paths/share", "paths/lib", "paths/jails/mounts", "paths/jails/src",
             "paths/jails/template", "paths/jails/template_build"]


def journal_of(state: Path, needs: rn.Needs) -> Journal:
    """A journal whose decision is NEEDS, each step it lets skip journaled skipped."""
    journal = Journal.open(state, "1.1", "1.1", "slave")
    journal.needs = needs.to_json()
    for order, (step, need) in enumerate(STEPS.items(), 1):
        if not getattr(needs, need):
            journal.steps[step] = StepRecord(StepStatus.DONE, 1.0, 2.0, "skipped: test",
                                             {rn.SKIPPED: "test"}, order=order)
    journal.save()
    return journal


def assert_safe(journal: Journal, fed: set[str]) -> None:
    """No step stays skipped whose need a changed input feeds."""
    after = rn.Needs.from_json(journal.needs or {})
    for need in fed:
        assert getattr(after, need), (need, journal.needs)
    for step, record in journal.steps.items():
        assert not (rn.SKIPPED in record.metrics and STEPS[step] in fed), (step, fed)


# ------------------------------------------------------------- a source tree

# path -> (kind, how it is made): text, or "->target" for a symlink.
TREE = {
    "setup.py": ("code", "#!/usr/bin/python3\n"),
    "ivle/database.py": ("code", "# db\n"),
    "ivle/jail/build/__init__.py": ("code", "# a package named build, not setup.py's\n"),
    "ivle/current": ("code", "->database.py"),
    "ivle/lib": ("code", "->../userdb"),
    "ivle/webapp/media/ivle.css": ("media", "body {}\n"),
    "userdb/migrations/20090105.sql": ("migration", "BEGIN;\nCOMMIT;\n"),
    "doc/upgrade.rst": ("doc", "Upgrading\n"),
}
NEW_OF_KIND = {"code": "ivle/new.py", "media": "ivle/webapp/media/new.js",
               "migration": "userdb/migrations/20100101-01.sql", "doc": "doc/new.rst"}


def make_tree(top: Path) -> None:
    for rel, (_, how) in TREE.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if how.startswith("->"):
            path.symlink_to(how[2:])
        else:
            path.write_text(how)


def change_tree(top: Path, op: str, rel: str) -> str:
    """Change one entry of the tree; its kind."""
    path = top / rel
    if op == "content":
        with path.open("a") as handle:
            handle.write("# changed\n")
    elif op == "mode":
        path.chmod(path.stat().st_mode ^ 0o111)
    elif op == "retarget":
        path.unlink()
        path.symlink_to("elsewhere")
    elif op == "remove":
        path.unlink()
    elif op == "to-symlink":  # a file replaced by a link to what it held
        path.unlink()
        path.symlink_to("/etc/hostname")
    return TREE[rel][0] if rel in TREE else next(k for k, p in NEW_OF_KIND.items() if p == rel)


files = [r for r, (_, how) in TREE.items() if not how.startswith("->")]
links = [r for r, (_, how) in TREE.items() if how.startswith("->")]
# Every single change of the tree or its other inputs, each case run.
TREE_CHANGES = [
    *[(op, rel) for op in ("content", "mode", "remove", "to-symlink") for rel in files],
    *[(op, rel) for op in ("retarget", "remove") for rel in links],
    *[("add", rel) for rel in sorted(NEW_OF_KIND.values())],
    *[("settings", key) for key in JAIL_KEYS], ("outside migration", ""), ("nothing", ""),
    ("outside file", ""), ("outside directory", ""),
]
decisions = st.fixed_dictionaries({need: st.booleans() for need in NEEDS})


@pytest.mark.parametrize("change", TREE_CHANGES, ids=" ".join)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(said=decisions, outside=st.booleans(), code_is_new=st.booleans())
def test_a_rerun_of_a_source_upgrade_never_skips_what_a_changed_input_feeds(
        change, said, outside, code_is_new):
    op, rel = change
    if op == "outside migration" and not outside:
        op = "nothing"
    with tempfile.TemporaryDirectory() as scratch:
        top = Path(scratch) / "ivle"
        top.mkdir()
        make_tree(top)
        migrations = Path(scratch) / "migrations" if outside else top / "userdb" / "migrations"
        migrations.mkdir(exist_ok=True)
        ctx = SimpleNamespace(source=top, migrations_dir=migrations, package=None, new="1.1",
                              old="1.1", code_is_new=False, ivle_conf=ivle_conf("bookworm"),
                              reporter=Reporter())
        outside_file = Path(scratch) / "elsewhere" / "site.py"  # a link leads out of the tree
        outside_file.parent.mkdir()
        outside_file.write_text("# site\n")
        (top / "ivle" / "site.py").symlink_to(outside_file)
        if op == "outside directory":  # not walked: such a tree is never proved unchanged
            (top / "ivle" / "vendor").symlink_to(outside_file.parent)
        decided = rn.Needs(**said, basis=rn.basis(ctx, rn.Release(None, rn.tree_files(top), "")))
        journal = journal_of(Path(scratch) / "state", decided)

        ctx.code_is_new = code_is_new  # the rerun: before or after ./setup.py install
        if op == "settings":
            ctx.ivle_conf = ivle_conf("bookworm", rel)
            kind = "settings"
        elif op == "outside migration":
            (migrations / "20100101-01.sql").write_text("CREATE TABLE t ();\n")
            kind = "migration"
        elif op in ("outside file", "outside directory"):  # what a link leads to changes
            name = "site.py" if op == "outside file" else "new.py"
            (outside_file.parent / name).write_text("# changed\n")
            kind = "code"
        elif op == "add":
            (top / rel).write_text("# new\n")
            kind = change_tree(top, op, rel)
        elif op != "nothing":
            kind = change_tree(top, op, rel)
        rn.confirm(ctx, journal)

        if op == "nothing":
            assert journal.needs == decided.to_json() and not ctx.reporter.warnings
        else:
            assert_safe(journal, FEEDS[kind])
            again = Journal.load(journal.path)  # what a later run reads
            assert again.needs == journal.needs and set(again.steps) == set(journal.steps)


# ------------------------------------------------------------------ a package

# path under the root -> (kind, how): text, "->target", or "conf:" text for a conffile.
PACKAGE = {
    "usr/lib/ivle/ivle/__init__.py": ("code", "# ivle\n"),
    "usr/lib/ivle/ivle/current": ("code", "->__init__.py"),
    "usr/sbin/ivle-tool": ("code", "#!/bin/sh\n"),
    "etc/init.d/ivle-usrmgt-server": ("code", "conf:#!/bin/sh\n"),
    "usr/lib/ivle/ivle/webapp/media/ivle.css": ("media", "body {}\n"),
    "usr/lib/ivle/ivle/webapp/media/current.css": ("media", "->ivle.css"),
    "usr/share/ivle/userdb/migrations/20090105.sql": ("migration", "BEGIN;\nCOMMIT;\n"),
    "usr/share/doc/ivle/README": ("doc", "read me\n"),
}


class Installed:
    """A package's files under ROOT and dpkg's record of them under ROOT/dpkg."""

    def __init__(self, root: Path) -> None:
        self.files = dict(PACKAGE)  # what the package ships, as a test makes it
        self.root, self.admin = root, root / "dpkg"
        (self.admin / "info").mkdir(parents=True)
        (self.admin / "tmp.ci").mkdir()
        for rel, (_, how) in PACKAGE.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if how.startswith("->"):
                path.symlink_to(how[2:])
            else:
                path.write_text(how.removeprefix("conf:"))

    def md5sums(self) -> str:
        """As dh_md5sums writes them: regular files, conffiles and symlinks left out."""
        import hashlib
        lines = []
        for rel, (_, how) in sorted(self.files.items()):
            path = self.root / rel
            if how.startswith(("->", "conf:")) or path.is_symlink() or not path.is_file():
                continue
            lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
        return "".join(lines)

    def record(self, where: str) -> None:
        """dpkg's lists of the files on disk now: the installed package's
        (info/) or the incoming one's (tmp.ci/, md5sums and control only)."""
        if where == "tmp.ci":
            (self.admin / "tmp.ci" / "md5sums").write_text(self.md5sums())
            (self.admin / "tmp.ci" / "control").write_text("Package: ivle\nVersion: 1.1\n")
            return
        info = self.admin / "info"
        (info / "ivle.md5sums").write_text(self.md5sums())
        # Paths as dpkg lists them, under DPKG_ROOT (the root given to dpkg).
        entries = {"/."} | {f"/{rel}" for rel in self.files if (self.root / rel).exists()
                            or (self.root / rel).is_symlink()}
        entries |= {str(p) for e in entries for p in Path(e).parents}  # every directory
        (info / "ivle.list").write_text("".join(f"{e}\n" for e in sorted(entries)))
        (info / "ivle.conffiles").write_text("".join(
            f"/{rel}\n" for rel, (_, how) in self.files.items() if how.startswith("conf:")))


def snapshot(path: Path) -> tuple[str, bytes | str, int]:
    if path.is_symlink():
        return "link", os.readlink(path), 0
    return "file", path.read_bytes(), path.stat().st_mode


def restore(path: Path, kept: tuple[str, bytes | str, int]) -> None:
    what, data, mode = kept
    if path.is_symlink() or path.exists():
        path.unlink()
    if what == "link":
        path.symlink_to(str(data))
    else:
        assert isinstance(data, bytes)
        path.write_bytes(data)
        path.chmod(mode)


def unpack_change(path: Path, op: str) -> None:
    """What the unpack of NEW changes of PATH."""
    if op == "content":
        with path.open("a") as handle:
            handle.write("# changed\n")
    elif op == "mode":
        path.chmod(path.stat().st_mode ^ 0o111)
    elif op == "retarget":
        path.unlink()
        path.symlink_to("elsewhere")
    elif op == "remove":
        path.unlink()


@pytest.mark.parametrize("change", [(op, rel) for op in ("content", "mode", "retarget",
                                                             "remove", "nothing")
                                     for rel in sorted(PACKAGE)], ids=" ".join)
@pytest.mark.parametrize("suite_changes", [False, True])
def test_a_package_upgrade_never_skips_what_a_changed_entry_feeds(change, suite_changes):
    """preinst: the decision, from dpkg's lists (md5sums: no conffile, no
    symlink, no mode); the unpack changes one entry; postinst: confirm."""
    op, rel = change
    kind, how = PACKAGE[rel]
    if op == "retarget" and not how.startswith("->"):
        op = "content"
    if op in ("content", "mode") and how.startswith("->"):
        op = "retarget"
    with tempfile.TemporaryDirectory() as scratch, pytest.MonkeyPatch.context() as env:
        package = Installed(Path(scratch))
        env.setenv("DPKG_ADMINDIR", str(package.admin))
        env.setenv("DPKG_ROOT", scratch)
        env.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
        path = package.root / rel
        package.record("info")  # OLD, installed
        kept = snapshot(path)
        unpack_change(path, op)
        package.record("tmp.ci")  # NEW's md5sums and control, beside its preinst
        restore(path, kept)  # OLD is what is on disk while the preinst runs
        settings_ = SlaveSettings(cluster={"coordinate": "never"})
        ctx = SimpleNamespace(source=None, migrations_dir=None, package="ivle", new="1.1",
                              old="1.1", code_is_new=False, ivle_conf=ivle_conf("bookworm"),
                              reporter=Reporter(), settings=settings_, rollback=None)
        decided = rn.decide(ctx)
        journal = journal_of(Path(scratch) / "state", decided)

        unpack_change(path, op)  # the unpack
        package.record("info")
        (package.admin / "tmp.ci" / "md5sums").unlink()
        env.setenv("DPKG_MAINTSCRIPT_NAME", "postinst")
        ctx.code_is_new = True
        if suite_changes:
            ctx.ivle_conf = ivle_conf("trixie")
        rn.confirm(ctx, journal)

        fed = (FEEDS[kind] if op != "nothing" else set()) | \
            (FEEDS["settings"] if suite_changes else set())
        if fed:
            assert_safe(journal, fed)
        else:
            assert journal.needs == decided.to_json(), ctx.reporter.warnings


def test_a_decision_whose_lists_are_gone_is_not_taken_on_its_word(tmp_path, monkeypatch):
    """After the unpack, dpkg's record of the package is what proves the
    decision; without one, nothing it skipped stays skipped."""
    package = Installed(tmp_path)
    monkeypatch.setenv("DPKG_ADMINDIR", str(package.admin))
    monkeypatch.setenv("DPKG_ROOT", str(tmp_path))
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    package.record("info")
    package.record("tmp.ci")
    ctx = SimpleNamespace(source=None, migrations_dir=None, package="ivle", new="1.1",
                          old="1.1", code_is_new=False, ivle_conf=ivle_conf("bookworm"),
                          reporter=Reporter(), settings=SlaveSettings(cluster={"coordinate":
                                                                                "never"}),
                          rollback=None)
    journal = journal_of(tmp_path / "state", rn.decide(ctx))
    for name in ("ivle.md5sums", "ivle.list", "ivle.conffiles"):
        (package.admin / "info" / name).unlink()
    ctx.code_is_new = True
    rn.confirm(ctx, journal)
    assert_safe(journal, set(NEEDS))
    assert "changed since the decision" in ctx.reporter.warnings[0]


def test_a_decision_from_before_bases_were_recorded_is_the_full_procedure(tmp_path):
    ctx = SimpleNamespace(source=tmp_path, migrations_dir=None, package=None, new="1.1",
                          old="1.1", code_is_new=True, ivle_conf=ivle_conf("bookworm"),
                          reporter=Reporter())
    journal = journal_of(tmp_path / "state", rn.Needs(False, False, False, False, False))
    rn.confirm(ctx, journal)
    assert_safe(journal, set(NEEDS))
    assert os.path.exists(journal.path)


def test_a_new_static_files_directory_keeps_a_decision_that_needs_static_files(
        tmp_path, monkeypatch):
    """What md5sums show the decision saw: a release adding a directory of
    static files (and a file in it) bumps the media version and keeps the
    site up; the postinst's proof finds nothing else moved."""
    package = Installed(tmp_path)
    monkeypatch.setenv("DPKG_ADMINDIR", str(package.admin))
    monkeypatch.setenv("DPKG_ROOT", str(tmp_path))
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    package.record("info")
    new_dir = "usr/lib/ivle/ivle/media"  # in a directory the package has
    package.files[f"{new_dir}/help.css"] = ("media", "h1 {}\n")
    (tmp_path / new_dir).mkdir(parents=True)
    (tmp_path / new_dir / "help.css").write_text("h1 {}\n")
    package.record("tmp.ci")
    shutil.rmtree(tmp_path / new_dir)
    ctx = SimpleNamespace(source=None, migrations_dir=None, package="ivle", new="1.1",
                          old="1.1", code_is_new=False, ivle_conf=ivle_conf("bookworm"),
                          reporter=Reporter(), settings=SlaveSettings(cluster={"coordinate":
                                                                                "never"}),
                          rollback=None)
    decided = rn.decide(ctx)
    assert decided.media and not decided.outage and not decided.jail
    journal = journal_of(tmp_path / "state", decided)
    (tmp_path / new_dir).mkdir(parents=True)  # the unpack
    (tmp_path / new_dir / "help.css").write_text("h1 {}\n")
    package.record("info")
    ctx.code_is_new = True
    rn.confirm(ctx, journal)
    assert journal.needs == decided.to_json(), ctx.reporter.warnings
