"""A fresh baselined IVLE database with its settings, for the session and
wait gates' cases (a Site of support/migration_site.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ivle_maint.db import migrations
from ivle_sandbox import schema
from support.migration_site import Site, fresh_site


@contextmanager
def baselined_site(postgres: Any, tmp_path: Path) -> Iterator[Site]:
    """A fresh IVLE database, baselined, with no migration pending."""
    site = fresh_site(postgres, tmp_path, "gate")
    for path in (site.root / "migrations").glob("*.sql"):
        path.unlink()
    site.add_migration("20090101-01.sql", "SELECT 1;\n")
    migrations.record_baseline(site.settings(), "20090101-01")
    try:
        yield site
    finally:
        schema.drop_database(postgres, site.dbname)


def add_settings(site: Site, **database: object) -> Path:
    """site.settings() plus [database] keys its template does not know."""
    site.settings()
    path = site.root / "etc" / "ivle-maint.conf"
    with path.open("a") as handle:  # [database] is the template's last section
        for key, value in database.items():
            handle.write(f"{key} = {value}\n")
    return path
