"""The import graph of ivle_maint/ flows one way: no module imports, even
inside a function, a module that imports it back (TYPE_CHECKING blocks
left out: they never run).  And outside the command line (cli.py,
commands/), each module imports what it needs at the top."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ivle_maint"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The ivle_maint modules a module's code imports, wherever it does."""
    found: set[str] = set()
    here = name.split(".") if is_package else name.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
        visit(node)

    visit(tree)
    return {m for m in found if m in known and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    known = set(paths)
    return {name: imported(ast.parse(path.read_text(encoding="utf-8")), name,
                           path.name == "__init__.py", known)
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of GRAPH as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                cycle = walk(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_ivle_maint_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    package = tmp_path / "ivle_maint"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from . import a\n")
    graph = import_graph(package)
    assert graph["ivle_maint.c"] == set()
    assert find_cycle(graph) == ["ivle_maint.a", "ivle_maint.sub.b", "ivle_maint.a"]


# The command line parses its arguments without loading the library: there,
# and only there, ivle_maint modules are imported inside functions.
LAZY_BY_DESIGN = ("ivle_maint.cli", "ivle_maint.commands")


def _lazy_by_design(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in LAZY_BY_DESIGN)


def function_local_imports(package: Path = PACKAGE) -> set[tuple[str, str]]:
    """(module, ivle_maint module) for each import inside a function, outside
    the command line (TYPE_CHECKING blocks left out)."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    known = set(paths)
    found: set[tuple[str, str]] = set()
    for name, path in paths.items():
        if _lazy_by_design(name):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                found |= {(name, dep) for dep in
                          imported(node, name, path.name == "__init__.py", known)}
    return found


def test_ivle_maint_modules_are_imported_at_the_top():
    local = sorted(function_local_imports())
    assert not local, "imported inside a function: " + ", ".join(
        f"{dep} in {name}" for name, dep in local)


def test_the_checker_finds_an_import_inside_a_function(tmp_path):
    package = tmp_path / "ivle_maint"
    (package / "commands").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import os\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import a\nif TYPE_CHECKING:\n"
        "    from . import c\n"
        "def f():\n    import json\n    if TYPE_CHECKING:\n        from . import c\n"
        "def g():\n    def inner():\n        from .a import os\n")
    (package / "c.py").write_text("def f():\n    from .commands import x\n")
    (package / "cli.py").write_text("def main():\n    from . import commands\n")
    (package / "commands" / "__init__.py").write_text("def f():\n    from .. import a\n")
    (package / "commands" / "x.py").write_text("def f():\n    from .. import a\n")
    assert function_local_imports(package) == {
        ("ivle_maint.b", "ivle_maint.a"), ("ivle_maint.c", "ivle_maint.commands.x")}
