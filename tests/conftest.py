"""Shared test setup: a private mount namespace, PostgreSQL, sandbox nodes.

As root, the whole test run moves into its own mount namespace with
private propagation before any test runs, so real bind mounts made by
tests (and by ivle-maint under test) never reach the host.  Without root,
tests marked needs_root are skipped, and the reason is shown.

Fixtures:
    postgres      session: a ThrowawayPostgres with the IVLE template database
    node_factory  function: build_node(**kwargs) -> Node, all torn down after
    node          function: 5 users, jails mounted, services running,
                  2 consoles; IVLECONF and IVLE_MAINT_CONF point at it
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

from ivle_sandbox import mountns  # noqa: E402

IS_ROOT = os.geteuid() == 0
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
    else:
        _namespace_note = f"sandbox: not root, needs_root tests skipped: {ROOT_REASON}"


def pytest_report_header(config: pytest.Config) -> str:
    return _namespace_note


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_root = pytest.mark.skip(reason=ROOT_REASON)
    no_pg = pytest.mark.skip(reason="needs PostgreSQL server binaries (apt install postgresql)")
    for item in items:
        if "needs_root" in item.keywords and not IS_ROOT:
            item.add_marker(no_root)
        if "needs_postgres" in item.keywords and not _have_postgres():
            item.add_marker(no_pg)


@pytest.fixture(scope="session")
def sandbox_dir() -> Iterator[Path]:
    """A /tmp directory for this run that other users can traverse."""
    from ivle_sandbox.postgres import make_sandbox_root

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
