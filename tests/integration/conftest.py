"""Fixtures of the integration tests (tests/conftest.py has the shared ones)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox import schema
from support.migration_site import Site, fresh_site


@pytest.fixture
def site(postgres: Any, tmp_path: Path) -> Iterator[Site]:
    """A fresh populated IVLE database with the fake migrations shipped."""
    s = fresh_site(postgres, tmp_path, "mig")
    s.settings()
    if os.geteuid() == 0:
        os.chown(s.root / "migrations", 0, 0)
    yield s
    schema.drop_database(postgres, s.dbname)
