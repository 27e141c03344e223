"""Abuse the preflight: what must be found while the site is still up.

Each case runs a real upgrade (`ivle-maint upgrade --source`, the source
install, whose preflight sees the new migrations) on a sandbox node at
1.0 with real PostgreSQL, and asserts one error line, the exit status,
the web server and consoles still up, the old code installed and the
database untouched (no marker written, nothing migrated).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_source_install import source_tree

from abuse_helpers import one_error_line
from ivle_maint.config import load_settings
from ivle_maint.db import pgparse
from ivle_maint.output import RecordingReporter
from ivle_maint.steps import migrations
from ivle_sandbox import mountns
from ivle_sandbox.releases import NEW, OLD, RELEASES
from upgrade_helpers import (
    OLD_KEYS,
    at_version_1_0,
    cli,
    final_state,
    marker_keys,
    schema_signature,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def upgrade(node: Any, tree: Path) -> subprocess.CompletedProcess[str]:
    return cli(node, "upgrade", "--from", "1.0", "--source", str(tree))


def assert_site_up_and_untouched(node: Any, consoles: list[int], marker: list[str],
                                 schema: list[Any]) -> None:  # fmt: skip
    assert node.service_running("apache2") and node.service_running("ivle-usrmgt-server")
    assert sorted(node.console_pids()) == sorted(consoles)
    assert node.installed_version() == "1.0"
    assert marker_keys(node) == marker and schema_signature(node) == schema
    assert len(node.mounts()) > 0  # the jails are still mounted


def started(node_factory: Any, *, baselined: bool = False) -> tuple[Any, list[int], list[Any]]:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    if baselined:
        assert cli(node, "db", "baseline", OLD_KEYS[-1]).returncode == 0
    return node, node.console_pids(), schema_signature(node)


def test_read_only_backup_directory_fails_the_preflight(node_factory: Any):
    node, consoles, schema = started(node_factory)
    mountns.bind(node.backup_dir, node.backup_dir, readonly=True)
    done = upgrade(node, source_tree(node, RELEASES["1.1"]))
    assert done.returncode == 1
    line = one_error_line(done)
    assert f"{node.backup_dir}: backups cannot be written there (Read-only file system)" in line
    assert_site_up_and_untouched(node, consoles, [], schema)


def test_read_only_backup_directory_in_db_migrate_is_one_line(node_factory: Any):
    node, _, _ = started(node_factory, baselined=True)
    unpack(node, "1.1")
    schema = schema_signature(node)
    mountns.bind(node.backup_dir, node.backup_dir, readonly=True)
    done = cli(node, "db", "migrate")
    assert done.returncode == 1
    assert "Read-only file system" in one_error_line(done)
    assert marker_keys(node) == OLD_KEYS and schema_signature(node) == schema


def test_a_role_that_may_not_create_the_marker_fails_the_preflight(node_factory: Any):
    node, consoles, schema = started(node_factory)
    admin = node.pg.connect(node.dbname, node.pg.superuser)
    admin.autocommit = True
    with admin.cursor() as cur:  # as on PostgreSQL 15 when ivle does not own the database
        cur.execute(f"ALTER SCHEMA public OWNER TO {node.pg.superuser}")
    admin.close()
    done = upgrade(node, source_tree(node, RELEASES["1.1"]))
    assert done.returncode == 1
    line = one_error_line(done)
    assert ("role ivle may not create table ivle_maint_migrations in schema public "
            "(permission denied for schema public)") in line  # fmt: skip
    assert "GRANT CREATE ON SCHEMA public TO ivle" in line
    assert_site_up_and_untouched(node, consoles, [], schema)


BROKEN = {
    "bad name": ({"2010-02-16.sql": "SELECT 1;\n"}, "not a migration file name"),
    "duplicate key": ({"20100216-1.sql": "SELECT 1;\n", "20100216-01.sql": "SELECT 2;\n"},
                      "are both migration 20100216-01"),
    "BEGIN without COMMIT": ({"20100216-01.sql": "BEGIN;\nCREATE TABLE t (x int);\n"},
                             "20100216-01.sql: line 1: BEGIN without a matching COMMIT"),
    "not UTF-8": ({"20100216-01.sql": b"COMMENT ON TABLE login IS '\xe9l\xe8ve';\n"},
                  "20100216-01.sql: not UTF-8 text (byte 27)"),
    "empty": ({"20100216-01.sql": "-- nothing yet\n"},
              "20100216-01.sql: holds no SQL statement"),
    "syntax error": ({"20100216-01.sql": "BEGIN;\nALTER TABLE login ADD x int;\nSELEC 1;\n"
                                         "COMMIT;\n"},
                     '20100216-01.sql: line 3: syntax error at or near "SELEC"'),
}  # fmt: skip


@pytest.mark.parametrize("baselined", [False, True], ids=["no marker", "marker"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_new_migration_fails_the_preflight(node_factory: Any, case: str,
                                                    baselined: bool):
    if case == "syntax error" and not pgparse.available():
        pytest.skip("needs pglast (PostgreSQL's parser): python3-pglast")
    node, consoles, schema = started(node_factory, baselined=baselined)
    files, expected = BROKEN[case]
    tree = source_tree(node, RELEASES["1.1"])
    for name, text in files.items():
        path = tree / "userdb" / "migrations" / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    done = upgrade(node, tree)
    assert done.returncode == 1
    assert expected in one_error_line(done)
    assert_site_up_and_untouched(node, consoles, OLD_KEYS if baselined else [], schema)
    if baselined:
        return
    # Fixed, the same command upgrades.
    for name in files:
        (tree / "userdb" / "migrations" / name).unlink()
    done = upgrade(node, tree)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == sorted(k.removesuffix(".sql") for k in {**OLD, **NEW})


def test_an_empty_migration_marked_as_such_is_applied(node_factory: Any):
    node, _, _ = started(node_factory)
    tree = source_tree(node, {**RELEASES["1.1"],
                              "20100216-01.sql": "-- ivle-maint: empty\n-- folded into 20100215\n"})
    done = upgrade(node, tree)
    assert done.returncode == 0, done.stderr
    assert "20100216-01" in marker_keys(node)


def test_the_markers_own_notice_is_not_logged_as_a_migrations(node: Any,
                                                              caplog: pytest.LogCaptureFixture):
    at_version_1_0(node)
    assert cli(node, "db", "baseline", OLD_KEYS[-1]).returncode == 0  # the marker exists
    unpack(node, "1.1")
    caplog.set_level(logging.DEBUG)
    result = migrations.migrate(load_settings(), RecordingReporter(), backup=False)
    assert [a.key for a in result.applied] == sorted(k.removesuffix(".sql") for k in NEW)
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "already exists" in m], said


def test_db_status_before_the_first_upgrade_says_the_upgrade_records_the_baseline(node: Any):
    at_version_1_0(node)
    done = cli(node, "db", "status")
    assert done.returncode == 0
    assert "records the installed version's migrations itself" in done.stdout
    assert "'ivle-maint db baseline THROUGH'" in done.stdout
