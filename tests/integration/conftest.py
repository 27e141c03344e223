"""Fixtures of the integration tests (tests/conftest.py has the shared ones)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox import schema
from support.migration_site import FAKES, Site


@pytest.fixture
def site(postgres: Any, tmp_path: Path) -> Iterator[Site]:
    """A fresh populated IVLE database with the fake migrations shipped."""
    dbname = f"mig_{uuid.uuid4().hex[:10]}"
    schema.create_database(postgres, dbname, users=3)
    root = tmp_path / "site"
    root.mkdir()
    shutil.copytree(FAKES, root / "migrations", ignore=shutil.ignore_patterns("*~"))
    (root / "migrations").chmod(0o755)
    s = Site(postgres, root, dbname)
    s.settings()
    if os.geteuid() == 0:
        os.chown(root / "migrations", 0, 0)
    yield s
    schema.drop_database(postgres, dbname)
