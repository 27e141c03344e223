"""The preinst's preflight checks the NEW version's migrations (issue 15).

Under dpkg the new files are not unpacked when the preinst runs, so the
preflight saw only the old ones.  dh_ivle_maint embeds a manifest of the
new migrations in the preinst, which hands it over on stdin.
"""

from __future__ import annotations

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.preinst_manifest import manifest, preinst_with
from support.upgrade_helpers import at_version_1_0, marker_keys

# Refused by the migration checks: it cannot run inside a transaction.
BROKEN = {"20100401-01.sql": "CREATE INDEX CONCURRENTLY login_nick_idx ON login (nick);\n"}


@pytest.fixture
def both(node_factory):
    return at_version_1_0(node_factory(users=6, consoles=3, role="both"))


def test_a_broken_new_migration_fails_the_preinst_with_the_site_up(both):
    text = manifest({**OLD, **NEW, **BROKEN})
    done = preinst_with(both, text, "--new-migrations", "-")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "20100401-01" in done.stderr and "transaction" in done.stderr
    assert both.service_running("apache2") and len(both.console_pids()) == 3
    assert len(both.mounts()) == 18 and marker_keys(both) == []


def test_without_the_manifest_the_preinst_cannot_see_it(both):
    # The hole the manifest closes: the old files on disk all pass.
    done = preinst_with(both, "")
    assert done.returncode == 0, done.stderr
    assert not both.service_running("apache2")


def test_a_good_manifest_passes_and_the_steps_use_the_old_files(both):
    done = preinst_with(both, manifest({**OLD, **NEW}), "--new-migrations", "-")
    assert done.returncode == 0, done.stderr
    assert not both.service_running("apache2")
    # baseline records what 1.0 shipped (the files on disk), not the manifest's.
    assert marker_keys(both) == sorted(k.removesuffix(".sql") for k in OLD)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ('{"format": "other"}\n', "not a ivle-maint-migrations/1 manifest"),
    (manifest({"a.sql": "x"}).replace('"count": 1', '"count": 2'), "truncated"),
    (manifest({"20100401-01.sql": "SELECT 1;\n"}).replace("SELECT 1", "SELECT 2"),
     "does not match its sha256"),
])
def test_a_damaged_manifest_is_one_line_and_changes_nothing(both, text, message):
    done = preinst_with(both, text, "--new-migrations", "-")
    assert done.returncode != 0
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert both.service_running("apache2") and len(both.mounts()) == 18
