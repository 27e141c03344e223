"""dh_ivle_maint's manifest of the new migrations, as its preinst embeds it,
and the preinst hook run with a manifest on its stdin."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from support.upgrade_helpers import REPO


def manifest(files: dict[str, str], version: str = "1.1") -> str:
    lines = [json.dumps({"format": "ivle-maint-migrations/1", "package": "ivle",
                         "version": version, "count": len(files)})]
    lines += [json.dumps({"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
                          "text": text}) for name, text in sorted(files.items())]
    return "\n".join(lines) + "\n"


def preinst_with(node, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ivle_maint", "hook", *extra, "preinst", "upgrade", "1.0", "1.1"],
        env=env, input=stdin, capture_output=True, text=True, timeout=300, check=False,
    )
