"""The installed package kept as a .deb for a rollback (rollback/old_package.py),
with real .debs (dpkg-deb), real dpkg in private roots (never the host's
database: support/private_dpkg.py), real dpkg-repack and python-debian.

The rebuild is also run where production runs it: from the preinst of a
real dpkg upgrade, while dpkg holds its lock and the old version is
half-installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.output import RecordingReporter
from ivle_maint.rollback import old_package
from ivle_maint.rollback.old_package import KeptPackage, keep_installed, prune, verify
from support.private_dpkg import PrivateRoot, build_deb, entries, sha256

pytestmark = [pytest.mark.needs_root]

REPO = Path(__file__).resolve().parents[2]
FILES = {"usr/share/tpkg/code.py": b"print('one')\n",
         "usr/share/tpkg/media/a file.css": b"body {}\n",
         "usr/lib/tpkg/empty": b"",
         "etc/tpkg/tpkg.conf": b"[tpkg]\nkey = shipped\n"}
CONF = "etc/tpkg/tpkg.conf"


class Node:
    """A private dpkg root with tpkg 1.0 installed, an empty apt cache and
    the restore point's directory."""

    def __init__(self, top: Path, files: dict[str, bytes] = FILES, package: str = "tpkg",
                 version: str = "1.0", conffiles: tuple[str, ...] = (CONF,)) -> None:
        self.top, self.package, self.version = top, package, version
        self.debs = top / "debs"
        self.debs.mkdir(parents=True)
        self.deb = build_deb(self.debs, package, version, files, conffiles=conffiles)
        self.dpkg = PrivateRoot(top / "root")
        self.dpkg.install(self.deb)
        self.cache = top / "cache"
        self.cache.mkdir()
        self.dest = top / "restore"
        self.reporter = RecordingReporter()

    def keep(self) -> KeptPackage:
        return keep_installed(self.package, self.dest, self.reporter, root=self.dpkg.root,
                              cache=self.cache)

    def cached(self, deb: Path | None = None) -> Path:
        """DEB (default: the installed one's) in apt's cache, as apt names it."""
        deb = deb or self.deb
        (self.cache / self.deb.name).write_bytes(deb.read_bytes())
        return self.cache / self.deb.name

    def reinstalled_elsewhere(self, deb: Path) -> PrivateRoot:
        """DEB installed in a second private root."""
        other = PrivateRoot(self.top / f"other-{len(entries(self.top))}")
        other.install(deb)
        return other


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs (the test run's private mount namespace: tests/conftest.py)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- from apt's cache ---------------------------------------------------------------


def test_a_cached_deb_of_the_installed_version_is_hard_linked(node: Node) -> None:
    cached = node.cached()
    kept = node.keep()
    assert kept.path == node.dest / "tpkg_1.0_all.deb"
    assert os.stat(kept.path).st_ino == os.stat(cached).st_ino
    assert (kept.sha256, kept.rebuilt) == (sha256(cached), False)
    assert entries(node.dest) == ["tpkg_1.0_all.deb"]
    verify(kept)
    assert node.reporter.lines == [f"kept tpkg 1.0 from apt's cache: {kept.path}"]


def test_a_cached_deb_on_another_filesystem_is_copied(tmp_path: Path,
                                                      other_filesystem: Path) -> None:
    node = Node(tmp_path / "n")
    node.cache = other_filesystem
    cached = node.cached()
    kept = node.keep()
    assert os.stat(kept.path).st_dev != os.stat(cached).st_dev
    assert kept.path.read_bytes() == cached.read_bytes() and not kept.rebuilt
    assert entries(node.dest) == ["tpkg_1.0_all.deb"]
    verify(kept)


def test_a_cached_deb_with_the_right_version_but_other_content_is_not_used(node: Node) -> None:
    tampered = build_deb(node.top, "tpkg", "1.0", {**FILES, "usr/share/tpkg/code.py": b"evil"},
                         conffiles=(CONF,))
    cached = node.cached(tampered)
    kept = node.keep()
    assert kept.rebuilt and os.stat(kept.path).st_ino != os.stat(cached).st_ino
    assert f"warning: {cached}: not what dpkg installed (usr/share/tpkg/code.py differs from " \
           "the installed one); not used" in node.reporter.lines
    assert node.reinstalled_elsewhere(kept.path).files("tpkg") == FILES


def test_a_cached_deb_with_a_changed_conffile_is_not_used(node: Node) -> None:
    other = build_deb(node.top, "tpkg", "1.0", {**FILES, CONF: b"other\n"}, conffiles=(CONF,))
    node.cached(other)
    assert node.keep().rebuilt


def test_a_damaged_cached_deb_is_not_used(node: Node) -> None:
    node.cached().write_bytes(node.deb.read_bytes()[:-100])
    assert node.keep().rebuilt


# -- rebuilt by dpkg-repack ---------------------------------------------------------


def test_without_a_cached_deb_it_is_rebuilt_and_installs_back_to_the_same_files(
        node: Node) -> None:
    (node.dpkg.root / CONF).write_bytes(b"[tpkg]\nkey = this node's\n")
    kept = node.keep()
    assert kept.rebuilt and kept.path == node.dest / "tpkg_1.0_all.deb"
    assert kept.sha256 == sha256(kept.path)
    assert entries(node.dest) == ["tpkg_1.0_all.deb"]  # its work directory is gone
    verify(kept)
    other = node.reinstalled_elsewhere(kept.path)
    assert other.query("-W", "-f=${Package} ${Version} ${Architecture}", "tpkg") == \
        "tpkg 1.0 all"
    # The conffile as modified on this node: what KeptPackage.rebuilt says.
    assert other.files("tpkg") == node.dpkg.files("tpkg") == \
        {**FILES, CONF: b"[tpkg]\nkey = this node's\n"}
    assert node.reporter.lines[-1] == "kept tpkg 1.0, rebuilt with its conffiles as they are " \
                                      f"on this node: {kept.path}"


def test_rebuilt_from_files_on_another_filesystem(tmp_path: Path,
                                                  other_filesystem: Path) -> None:
    """The restore point on another filesystem than the installed files: the
    shadow root dpkg-repack reads is made of copies, not hard links."""
    node = Node(tmp_path / "n")
    node.dest = other_filesystem / "restore"
    os.chmod(node.dpkg.root / "usr/share/tpkg/code.py", 0o4750)  # kept as installed
    kept = node.keep()
    assert kept.rebuilt and entries(node.dest) == ["tpkg_1.0_all.deb"]
    other = node.reinstalled_elsewhere(kept.path)
    assert other.files("tpkg") == FILES
    assert os.stat(other.root / "usr/share/tpkg/code.py").st_mode & 0o7777 == 0o4750


def test_a_diverted_file_is_rebuilt_from_where_dpkg_put_it(tmp_path: Path) -> None:
    """Another package diverted code.py before tpkg came: tpkg's own file is
    the .distrib one, and the rebuilt package has it under its own name."""
    root = PrivateRoot(tmp_path / "root")
    subprocess.run(["dpkg-divert", f"--root={root.root}", "--package", "other", "--rename",
                    "--divert", "/usr/share/tpkg/code.py.distrib", "--add",
                    "/usr/share/tpkg/code.py"], check=True, capture_output=True)
    node = Node(tmp_path / "n")
    node.dpkg = root
    root.install(node.deb)
    (root.root / "usr/share/tpkg/code.py").write_bytes(b"the other package's\n")
    kept = node.keep()
    assert kept.rebuilt
    assert node.reinstalled_elsewhere(kept.path).files("tpkg") == FILES


def test_a_locally_changed_file_is_not_rebuilt_into_the_package(node: Node) -> None:
    (node.dpkg.root / "usr/share/tpkg/code.py").write_bytes(b"print('patched')\n")
    with pytest.raises(MaintError) as info:
        node.keep()
    assert str(info.value) == (
        "cannot keep tpkg 1.0: usr/share/tpkg/code.py differs from the installed one (see "
        f"dpkg --verify tpkg); reinstall it, or put its .deb in {node.cache}, and run again")
    assert entries(node.dest) == []


def test_what_dpkg_repack_cannot_rebuild_is_one_line(tmp_path: Path) -> None:
    """A conffile whose name ends in a blank: dpkg-deb drops it from the
    conffiles list dpkg-repack writes, and refuses the package."""
    node = Node(tmp_path, files={**FILES, "etc/tpkg/odd ": b"x"},
                conffiles=(CONF, "etc/tpkg/odd "))
    with pytest.raises(MaintError) as info:
        node.keep()
    assert str(info.value) == (
        "dpkg-repack could not rebuild tpkg 1.0 (dpkg-deb: error: conffile '/etc/tpkg/odd' "
        f"does not appear in package); put its .deb in {node.cache} (there: apt-get download "
        "tpkg=1.0) and run again")
    assert entries(node.dest) == []


def test_a_package_dpkg_does_not_have_is_one_line(node: Node) -> None:
    with pytest.raises(MaintError) as info:
        keep_installed("nosuch", node.dest, node.reporter, root=node.dpkg.root)
    assert str(info.value) == "cannot keep the installed nosuch for a rollback: dpkg does " \
                              "not know it"


def test_kept_by_the_preinst_of_a_real_upgrade(node: Node) -> None:
    """dpkg -i of 2.0 runs its preinst with 1.0 half-installed and its lock
    held: the preinst keeps 1.0 (rebuilt, the cache being empty), and the
    kept file installs back to 1.0's files."""
    script = node.top / "keep.py"
    script.write_text(
        "import json, sys\nfrom pathlib import Path\n"
        "from ivle_maint.output import RecordingReporter\n"
        "from ivle_maint.rollback.old_package import keep_installed\n"
        "kept = keep_installed('tpkg', Path(sys.argv[1]), RecordingReporter(), "
        "cache=Path(sys.argv[2]))\n"
        "Path(sys.argv[3]).write_text(json.dumps(kept.to_json()))\n")
    record = node.top / "kept.json"
    preinst = (f"#!/bin/sh\nset -e\necho \"preinst $*: $(dpkg-query --root=$DPKG_ROOT/ -W "
               f"-f='${{Status}}' tpkg)\"\n[ \"$1\" = upgrade ] || exit 0\n"
               f"PYTHONPATH={REPO} exec {sys.executable} {script} {node.dest} {node.cache} "
               f"{record}\n")
    new = build_deb(node.debs, "tpkg", "2.0", {**FILES, "usr/share/tpkg/code.py": b"two"},
                    conffiles=(CONF,), preinst=preinst)
    out = node.dpkg.install(new)
    assert "preinst upgrade 1.0 2.0: install reinstreq half-installed" in out
    kept = KeptPackage.from_json(json.loads(record.read_text()))
    assert (kept.version, kept.rebuilt) == ("1.0", True)
    verify(kept)
    assert node.dpkg.query("-W", "-f=${Version}", "tpkg") == "2.0"
    assert node.reinstalled_elsewhere(kept.path).files("tpkg") == FILES


def test_nothing_is_kept_from_the_preinst_of_a_first_install(tmp_path: Path) -> None:
    """dpkg's stanza names the new version there, half-installed, with no
    files: that is no installed package to keep."""
    script = tmp_path / "keep.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from ivle_maint.errors import MaintError\n"
        "from ivle_maint.output import RecordingReporter\n"
        "from ivle_maint.rollback.old_package import keep_installed\n"
        "try:\n    keep_installed('tpkg', Path(sys.argv[1]), RecordingReporter(), "
        "cache=Path(sys.argv[1]))\n"
        "except MaintError as exc:\n    print('refused:', exc)\n")
    preinst = f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} {script} {tmp_path / 'd'}\n"
    deb = build_deb(tmp_path, "tpkg", "1.0", FILES, conffiles=(CONF,), preinst=preinst)
    out = PrivateRoot(tmp_path / "root").install(deb)
    assert "refused: cannot keep tpkg 1.0 for a rollback: no version of it was installed " \
           "before (a first install has nothing to roll back to)" in out
    assert not (tmp_path / "d").exists()


# -- verify, idempotence, the record ------------------------------------------------


def test_verify_names_a_changed_missing_or_other_package(node: Node) -> None:
    node.cached()
    kept = node.keep()
    data = kept.path.read_bytes()
    kept.path.unlink()  # a hard link: a new file, not the cache's, is changed below
    kept.path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(MaintError) as info:
        verify(kept)
    assert str(info.value).startswith(f"{kept.path}: the kept package changed since it was "
                                      "kept (sha256 ")
    assert str(info.value).endswith("take a new restore point before relying on it")
    kept.path.unlink()
    with pytest.raises(MaintError, match=r"the kept package tpkg 1.0 is missing; take a new"):
        verify(kept)
    other = build_deb(node.top, "tpkg", "0.9", FILES)
    with pytest.raises(MaintError, match=r"its control says tpkg 0.9 all, not tpkg 1.0 all;"):
        verify(KeptPackage("tpkg", "1.0", "all", other, sha256(other), False))
    for exc in (info.value,):
        assert "\n" not in str(exc)


@pytest.mark.parametrize("cached", [True, False], ids=["from-cache", "rebuilt"])
def test_keeping_again_returns_the_kept_file_without_work(node: Node, cached: bool) -> None:
    if cached:
        node.cached()
    first = node.keep()
    before = os.stat(first.path)
    node.reporter.lines.clear()
    assert node.keep() == first
    after = os.stat(first.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert node.reporter.lines == [f"tpkg 1.0 is kept already: {first.path}"]


def test_an_invalid_file_under_the_kept_name_is_kept_again(node: Node) -> None:
    node.dest.mkdir()
    (node.dest / "tpkg_1.0_all.deb").write_bytes(b"not a package")
    kept = node.keep()
    verify(kept)
    line = node.reporter.lines[0]
    assert line.startswith(f"warning: {kept.path}: not a readable package (")
    assert line.endswith("); kept again")


def test_the_record_round_trips_and_a_damaged_one_is_one_line(node: Node) -> None:
    kept = node.keep()
    assert KeptPackage.from_json(json.loads(json.dumps(kept.to_json()))) == kept
    for damaged in ({}, {**kept.to_json(), "rebuilt": "yes"}, {**kept.to_json(), "path": 3}):
        with pytest.raises(MaintError, match="record of the kept package is damaged"):
            KeptPackage.from_json(damaged)


def test_prune_keeps_what_the_restore_point_keeps(node: Node) -> None:
    kept = node.keep()
    old = node.dest / "tpkg_0.9_all.deb"
    old.write_bytes(b"old")
    (node.dest / f"{old_package.TEMP_PREFIX}abc").mkdir()  # a killed run's
    (node.dest / ".tpkg_1.1_all.deb.0123.tmp").write_bytes(b"half")  # replace_file's
    (node.dest / "notes.txt").write_text("not ours")
    removed = prune(node.dest, {kept.path})
    assert sorted(p.name for p in removed) == sorted(
        [".ivle-maint-keep-abc", ".tpkg_1.1_all.deb.0123.tmp", "tpkg_0.9_all.deb"])
    assert entries(node.dest) == ["notes.txt", "tpkg_1.0_all.deb"]


# -- interrupted: nothing half-written is left --------------------------------------


def test_an_interrupted_copy_leaves_nothing(tmp_path: Path, other_filesystem: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(tmp_path / "n", files={**FILES, "usr/lib/tpkg/big": os.urandom(3 << 20)})
    node.cache = other_filesystem
    node.cached()
    copying = old_package._chunks
    written = []

    def interrupted(*args: object) -> Iterator[bytes]:
        for chunk in copying(*args):  # type: ignore[arg-type]
            written.append(len(chunk))
            yield chunk
            raise KeyboardInterrupt  # Ctrl-C after the first piece is written

    monkeypatch.setattr(old_package, "_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        node.keep()
    assert written and entries(node.dest) == []


@pytest.mark.parametrize("where", ["_shadow_root", "_checked"])
def test_an_interrupted_rebuild_leaves_nothing(node: Node, monkeypatch: pytest.MonkeyPatch,
                                               where: str) -> None:
    """Ctrl-C once the shadow root is gathered, or once dpkg-repack built the .deb."""
    real = getattr(old_package, where)

    def interrupted(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(old_package, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        node.keep()
    assert entries(node.dest) == []


def test_ctrl_c_while_dpkg_repack_runs_leaves_nothing(tmp_path: Path) -> None:
    """A real SIGINT to a process keeping a package (24 MB of incompressible
    data: dpkg-repack is still compressing when it comes)."""
    node = Node(tmp_path / "n", files={**FILES, "usr/lib/tpkg/big": os.urandom(24 << 20)})
    script = node.top / "keep.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from ivle_maint.output import RecordingReporter\n"
        "from ivle_maint.rollback.old_package import keep_installed\n"
        "keep_installed('tpkg', Path(sys.argv[1]), RecordingReporter(), "
        "root=Path(sys.argv[2]), cache=Path(sys.argv[3]))\n")
    proc = subprocess.Popen([sys.executable, str(script), str(node.dest), str(node.dpkg.root),
                             str(node.cache)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(node.dest.glob(".ivle-maint-keep-*/out/dpkg-repack.*")):
        assert proc.poll() is None and time.monotonic() < deadline, "dpkg-repack never ran"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert entries(node.dest) == []
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit()
                and _cwd(pid).startswith(f"{node.dest}/")], "a child of the keeper runs on"


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


# -- any package --------------------------------------------------------------------

NAME = st.text("abz09 ._-+é", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.startswith("-"))
PATHS = st.lists(NAME, min_size=1, max_size=3).map("/".join)
# dpkg-deb reads a conffiles list with its trailing blanks dropped, so a
# conffile whose name ends in one cannot be rebuilt (keep_installed says so,
# in one line, naming dpkg-deb's error).
CONF_NAME = NAME.filter(lambda s: not s.endswith(" "))


def _no_file_is_a_directory(files: dict[str, bytes]) -> bool:
    return not any(other.startswith(path + "/") for path in files for other in files)


@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(package=st.from_regex(r"[a-z0-9][a-z0-9+.-]{1,10}", fullmatch=True),
       version=st.from_regex(r"([1-9]:)?[0-9][0-9a-z.+~]{0,5}(-[0-9a-z.+~]{1,3})?",
                             fullmatch=True),
       code=st.dictionaries(PATHS, st.binary(max_size=300), min_size=1, max_size=5)
       .filter(_no_file_is_a_directory),
       confs=st.dictionaries(CONF_NAME, st.binary(max_size=50), max_size=2),
       in_cache=st.booleans(), conf_changed=st.booleans())
def test_any_package_is_kept_as_dpkg_installed_it(package: str, version: str, *,
                                                  code: dict[str, bytes],
                                                  confs: dict[str, bytes], in_cache: bool,
                                                  conf_changed: bool) -> None:
    files = {**{f"usr/share/{package}/{p}": d for p, d in code.items()},
             **{f"etc/{package}/{p}": d for p, d in confs.items()}}
    conffiles = tuple(f"etc/{package}/{p}" for p in confs)
    with tempfile.TemporaryDirectory() as top:
        node = Node(Path(top), files, package, version, conffiles)
        if in_cache:
            node.cached()
        for conf in conffiles[:1] if conf_changed else ():
            (node.dpkg.root / conf).write_bytes(b"changed here\n")
        kept = node.keep()
        verify(kept)
        assert kept.path.name == f"{package}_{version.replace(':', '%3a')}_all.deb"
        assert kept.rebuilt is not in_cache
        back = node.reinstalled_elsewhere(kept.path).files(package)
        assert back == (files if in_cache else node.dpkg.files(package))
        assert entries(node.dest) == [kept.path.name]
