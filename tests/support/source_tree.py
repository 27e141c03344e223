"""An IVLE source tree for `ivle-maint upgrade --source DIR`: a stand-in
whose setup.py behaves as IVLE's does (`./setup.py build`, `./setup.py
install`), installing the new code into a sandbox node."""

from __future__ import annotations

from ivle_sandbox.releases import RELEASES

SETUP_PY = """\
#!/usr/bin/python3
# Stand-in for an IVLE source tree's setup.py: build, install, --version.
import sys
sys.path.insert(0, {scripts!r})
from pathlib import Path
from ivle_sandbox.jailtree import install_code

here = Path(__file__).resolve().parent
action = sys.argv[1]
if action == "--version":
    print("1.1")
elif action == "build":
    (here / "build").mkdir(exist_ok=True)
    print("building ivle 1.1")
elif action == "install":
    if not (here / "build").is_dir():
        sys.exit("error: run ./setup.py build first")
    if (here / "FAIL_INSTALL").exists():
        sys.exit("error: could not copy files")
    install_code(Path({share!r}), Path({lib!r}), Path({migrations!r}), "1.1", {release!r})
    print("installed ivle 1.1")
"""


def source_tree(node, migrations: dict[str, str]):
    tree = node.root / "src" / "ivle-1.1"
    (tree / "userdb" / "migrations").mkdir(parents=True)
    for name, text in migrations.items():
        (tree / "userdb" / "migrations" / name).write_text(text)
    setup = tree / "setup.py"
    setup.write_text(SETUP_PY.format(
        scripts=str(node.fakes.parent.parent / "scripts"), share=str(node.share),
        lib=str(node.lib), migrations=str(node.migrations), release=RELEASES["1.1"],
    ))
    setup.chmod(0o755)
    return tree
