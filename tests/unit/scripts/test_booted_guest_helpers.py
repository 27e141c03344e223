"""The booted node's guest script uses the end-to-end driver's helpers: every
name it takes from them exists, so a move inside the driver breaks here and
not twenty minutes into a booted scenario."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
GUEST = SCRIPTS / "booted" / "guest.py"
HELPER_MODULES = {"cluster": "driver.cluster", "config": "driver.config",
                  "harness": "driver.harness", "node": "driver.node", "standin": "standin"}


def used_names() -> set[tuple[str, str]]:
    tree = ast.parse(GUEST.read_text())
    return {(node.value.id, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in HELPER_MODULES}


def test_guest_takes_only_names_the_driver_has(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.syspath_prepend(str(SCRIPTS / "e2e"))
    names = used_names()
    assert {"config", "harness", "node"} <= {module for module, _ in names}
    missing = [f"{module}.{attr}" for module, attr in sorted(names)
               if not hasattr(importlib.import_module(HELPER_MODULES[module]), attr)]
    assert missing == []
