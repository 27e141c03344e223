"""psycopg2 loaded without Python's ssl (ivle_maint/pgdriver.py) still talks
TLS: libpq does its own.  The sandbox's server offers TLS as Debian's
postgresql-common sets every cluster up (ssl = on), so ivle-maint's
connection from ivle.conf (host, port, password: libpq's sslmode=prefer)
takes it, as on an IVLE master.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter connects as `db status` does (settings, session) and
# says what the server saw of its connection and whether ssl was loaded.
PROBE = """\
import json, sys
from ivle_maint.config import load_settings
from ivle_maint.db.session import session
from ivle_maint.output import RecordingReporter

with session(load_settings(), RecordingReporter(), None) as s:
    with s.conn.cursor() as cur:
        cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        tls, version = cur.fetchone()
print(json.dumps({"tls": tls, "version": version, "ssl_loaded": "ssl" in sys.modules}))
"""


def probe(node, *first: str) -> dict[str, object]:
    """PROBE's answer, with FIRST imported before anything else."""
    code = "".join(f"import {name}\n" for name in first) + PROBE
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_ivle_maint_talks_tls_without_pythons_ssl(node_factory):
    node = node_factory(users=0)
    seen = probe(node)
    assert seen["tls"] is True and str(seen["version"]).startswith("TLSv1")
    assert seen["ssl_loaded"] is False


def test_ssl_loaded_first_changes_nothing(node_factory):
    """A process that has ssl already (a test harness, a future caller)
    gets psycopg2 as it always loaded, TLS and all."""
    node = node_factory(users=0)
    seen = probe(node, "ssl")
    assert seen["tls"] is True and seen["ssl_loaded"] is True
