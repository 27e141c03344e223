"""Shared test setup: a private mount namespace, PostgreSQL, sandbox nodes.

As root, the whole test run moves into its own mount namespace with
private propagation before any test runs, so real bind mounts made by
tests (and by ivle-maint under test) never reach the host.  Without root,
tests marked needs_root are skipped, and the reason is shown.

Run in parallel (pytest-xdist, `-n 3`: make test-debian), every worker
is a test run of its own: its own mount namespace (a copy of the
controller's, made by `unshare --mount` before the worker's Python
starts, since a process with threads cannot unshare its mounts), its own
PostgreSQL server and /tmp directory ($TMPDIR), and IVLE users whose
unixids no other running test process uses (schema.claim_unixids), so
that what one worker mounts, signals or counts by uid is never another's.

Fixtures:
    postgres      session: a ThrowawayPostgres with the IVLE template database
    node_factory  function: build_node(**kwargs) -> Node, all torn down after
    node          function: 5 users, jails mounted, services running,
                  2 consoles; IVLECONF and IVLE_MAINT_CONF point at it
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from ivle_sandbox import mountns  # scripts/: on sys.path by setup.cfg's pythonpath

# No Hypothesis deadline for any test: a deadline is a timed assertion, and
# a loaded machine (the .deb's build runs tests/unit beside other work) beat
# the default 200 ms once on a test that takes 0.03 ms.
# Under CI (CI set, as .ci/run sets it) the cases are the same on every run,
# so a landing is judged on what was judged before it; a developer's run
# draws new ones each time, which is where new cases are found.
hypothesis_settings.register_profile("ivle-maint", deadline=None,
                                     derandomize=bool(os.environ.get("CI")),
                                     print_blob=True)
hypothesis_settings.load_profile("ivle-maint")

IS_ROOT = os.geteuid() == 0

# Launched in the background by a shell (`cmd &`), a process starts with
# SIGINT ignored, and so would every ivle-maint the tests run: the tests of
# Ctrl-C would then fail however correct the code is.  Tests run as if
# started from a terminal, whoever launched them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
ROOT_REASON = "needs root (mount namespaces, chown, processes as other users); run as root"
_namespace_note = ""


def _have_postgres() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def pytest_configure(config: pytest.Config) -> None:
    global _namespace_note
    for line in (
        "needs_root: needs root (mount namespaces, chown, other users' processes)",
        "needs_postgres: starts a throwaway PostgreSQL server",
    ):
        if line not in config.getini("markers"):
            config.addinivalue_line("markers", line)
    if IS_ROOT:
        # Before pytest starts any thread: unshare(CLONE_NEWNS) needs that.
        mountns.enter_private_namespace()
        ino = os.stat("/proc/self/ns/mnt").st_ino
        _namespace_note = f"sandbox: private mount namespace mnt:[{ino}]"
        if hasattr(config, "workerinput"):
            _worker_namespace(ino)
    else:
        _namespace_note = f"sandbox: not root, needs_root tests skipped: {ROOT_REASON}"
    _use_private_tmp()


def _worker_namespace(mine: int) -> None:
    """An xdist worker: in a namespace of its own (pytest_xdist_setupnodes),
    never its controller's, which every other worker shares."""
    controller = os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino
    if controller == mine:
        raise pytest.UsageError(
            "xdist worker in its controller's mount namespace: start workers with "
            "tests/conftest.py's pytest_xdist_setupnodes (popen workers only)"
        )
    os.environ[mountns.NS_ENV] = f"{controller}:{mine}"  # the proof, as unshare gives


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list[Any]) -> None:
    """Each xdist worker's Python starts in a mount namespace of its own."""
    if not IS_ROOT:
        return
    for spec in specs:
        if spec.popen:
            python = spec.python or sys.executable
            spec.python = f"unshare --mount --propagation private {shlex.quote(python)}"


def _clean(text: str) -> str:
    """TEXT with each lone surrogate (undecodable bytes a test wrote) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """An xdist worker sends each report as UTF-8, which a lone surrogate in
    a captured log or a failure's text cannot be: escape them first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    report.sections = [(title, _clean(content)) for title, content in report.sections]
    if report.longrepr is not None and _clean(str(report.longrepr)) != str(report.longrepr):
        report.longrepr = _clean(str(report.longrepr))


def _use_private_tmp() -> None:
    """$TMPDIR: a directory like /tmp (mode 1777) for this process alone, so
    a test looking at every file in the temporary directory sees only its
    own run's (another worker's, or another test run's, are elsewhere).
    It is removed at exit unless a test failed (kept to look at)."""
    private = Path(tempfile.mkdtemp(prefix="ivle-tests-tmp-", dir="/tmp"))
    private.chmod(0o1777)
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = None  # gettempdir() reads $TMPDIR again
    # Registered before pytest's own cleanup of its tmp_path directories
    # (in $TMPDIR), so it runs after it.
    atexit.register(_remove_private_tmp, private)


_passed = False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _passed
    _passed = exitstatus == 0


def _remove_private_tmp(private: Path) -> None:
    if _passed and not mountns.mounts_under(private):
        mountns.remove_tree(private)


@pytest.fixture(scope="session")
def sandbox_dir() -> Iterator[Path]:
    """A /tmp directory for this run that other users can traverse."""
    from ivle_sandbox import schema
    from ivle_sandbox.postgres import make_sandbox_root

    if IS_ROOT:
        schema.claim_unixids()
    root = make_sandbox_root("ivle-tests-")
    yield root
    mountns.unmount_under(root)
    mountns.remove_tree(root)


@pytest.fixture(scope="session")
def postgres(sandbox_dir: Path) -> Iterator[Any]:
    """One throwaway server for the run, with the IVLE template database."""
    if not _have_postgres():
        pytest.skip("needs PostgreSQL server binaries (apt install postgresql)")
    from ivle_sandbox import schema
    from ivle_sandbox.postgres import ThrowawayPostgres

    with ThrowawayPostgres(sandbox_dir / "pg") as pg:
        schema.ensure_template(pg)
        yield pg


@pytest.fixture
def node_factory(
    postgres: Any, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """build_node with a fresh database and tree; env=True also exports
    IVLECONF and IVLE_MAINT_CONF for the node."""
    if not IS_ROOT:
        pytest.skip(ROOT_REASON)
    import tempfile

    from ivle_sandbox.node import Node, build_node

    nodes: list[Node] = []
    parent = sandbox_dir / "nodes"
    parent.mkdir(mode=0o755, exist_ok=True)

    def make(*, env: bool = False, **kwargs: Any) -> Node:
        root = Path(tempfile.mkdtemp(prefix="n", dir=parent))
        node = build_node(root, pg=postgres, **kwargs)
        nodes.append(node)
        if env:
            for key, value in node.env.items():
                monkeypatch.setenv(key, value)
        return node

    yield make
    errors = []
    for node in reversed(nodes):
        try:
            node.teardown()
        except Exception as exc:  # teardown all, report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def node(node_factory: Callable[..., Any]) -> Any:
    """A mounted node: 5 users, services running, consoles for 2 users."""
    return node_factory(users=5, consoles=2, env=True)
