"""The import graph of ivle_maint/ flows one way, down a stack of named
layers: a module imports only from its own layer or below, nothing but
the procedure imports a step, and no module imports, even inside a
function, a module that imports it back (TYPE_CHECKING blocks left out:
they never run).  And outside the command line (cli.py, commands/), each
module imports what it needs at the top.

Each checker is also fed a small graph that breaks its rule, so a checker
that can no longer fail is seen."""

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


# ivle_maint's layers, bottom to top, each named by the top-level modules
# and packages in it ("__init__": the package itself).  A module imports
# only from its own layer or below; a new top-level module must be placed.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # What everything uses: errors, the gates, settings, output, commands
    # run, files written, the journal, the Step and UpgradeContext types.
    ("base", ("__init__", "errors", "gates", "config", "output", "system", "children",
              "safepaths", "liveness", "roles", "context", "mountinfo", "jaildir", "journal",
              "logformat", "logfile", "lock", "versions", "dpkg", "dpkg_calls", "installed",
              "migration_manifest", "source", "summary", "quickrun", "warm", "pgdriver")),
    # The work, named by what it does: below the cluster and the steps, so
    # cluster/, the steps, preflight and the CLI all call it, never it them.
    ("library", ("db", "services", "consoles", "jails", "media", "pool")),
    # The nodes' coordination through the database's cluster tables.
    ("cluster", ("cluster",)),
    # Restore points: what the steps keep, and what a rollback puts back.
    ("rollback", ("rollback",)),
    # One module per step of IVLE's upgrade procedure, and what decides
    # which steps a release needs: release_needs, and whether it rolls.
    ("steps", ("steps", "release_needs", "roll")),
    # The steps in order, and the runner that walks them with the journal.
    ("procedure", ("procedure", "runner")),
    # A whole upgrade: preflight, plan, lock and log, dpkg's hooks.
    ("upgrade", ("preflight", "plan", "upgrade", "hooks", "codestate")),
    # Arguments parsed, the library loaded only for the command chosen.
    ("command line", ("commands", "cli", "__main__")),
    # The postinst's warm start: it runs the command line (warm.py).
    ("warm worker", ("warm_worker",)),
)

STEPS = "ivle_maint.steps"
# The one module that imports the steps (steps may import each other).
STEPS_IMPORTER = "ivle_maint.procedure"


def top_name(module: str) -> str:
    """The top-level module or package MODULE belongs to ("__init__": ivle_maint)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_index(layers: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, int]:
    return {top: i for i, (_, tops) in enumerate(layers) for top in tops}


def unplaced(graph: dict[str, set[str]],
             layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """The modules of GRAPH in no layer."""
    index = layer_index(layers)
    return sorted(m for m in graph if top_name(m) not in index)


def upward_imports(graph: dict[str, set[str]],
                   layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Each import of a module in a higher layer, as 'a (layer) -> b (layer)'."""
    index = layer_index(layers)
    found = []
    for name in sorted(graph):
        here = index.get(top_name(name))
        for dep in sorted(graph[name]):
            there = index.get(top_name(dep))
            if here is not None and there is not None and there > here:
                found.append(f"{name} ({layers[here][0]}) -> {dep} ({layers[there][0]})")
    return found


def _is_step(module: str) -> bool:
    return module == STEPS or module.startswith(STEPS + ".")


def step_importers(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a step by a module other than the procedure or a step."""
    return [f"{name} -> {dep}" for name in sorted(graph)
            if name != STEPS_IMPORTER and not _is_step(name)
            for dep in sorted(graph[name]) if _is_step(dep)]


def test_every_module_has_a_layer():
    missing = unplaced(import_graph())
    assert not missing, "in no layer of LAYERS: " + ", ".join(missing)


def test_modules_import_only_their_own_layer_or_below():
    upward = upward_imports(import_graph())
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def test_only_the_procedure_imports_the_steps():
    found = step_importers(import_graph())
    assert not found, f"only {STEPS_IMPORTER} imports the steps: " + "; ".join(found)


def package_graph(graph: dict[str, set[str]], tops: set[str]) -> dict[str, set[str]]:
    """GRAPH between the packages TOPS: which of them each imports from."""
    return {top: {top_name(dep) for name, deps in graph.items() if top_name(name) == top
                  for dep in deps if top_name(dep) in tops - {top}}
            for top in tops}


def test_the_library_packages_use_each_other_one_way():
    """Within a layer modules may lean on each other, but two library
    packages never both ways (jails uses consoles; consoles never jails)."""
    library = set(dict(LAYERS)["library"])
    cycle = find_cycle(package_graph(import_graph(), library))
    assert cycle is None, "library packages import each other: " + " -> ".join(cycle or [])


def test_the_package_checker_finds_two_packages_leaning_on_each_other():
    graph = {"ivle_maint.x.a": {"ivle_maint.y.b"}, "ivle_maint.y.b": set(),
             "ivle_maint.y.c": {"ivle_maint.x.d"}, "ivle_maint.x.d": {"ivle_maint.base"},
             "ivle_maint.base": set()}
    assert find_cycle(graph) is None  # no module cycle, yet x and y lean on each other
    assert find_cycle(package_graph(graph, {"x", "y"})) == ["x", "y", "x"]


def test_the_layer_checkers_find_what_breaks_their_rules():
    layers = (("low", ("__init__", "a")), ("mid", ("b", "steps")), ("high", ("procedure",)))
    graph = {
        "ivle_maint": set(),
        "ivle_maint.a": {"ivle_maint.b"},                    # up a layer
        "ivle_maint.b": {"ivle_maint.a", "ivle_maint.steps.one"},  # a step, not procedure
        "ivle_maint.steps": set(),
        "ivle_maint.steps.one": {"ivle_maint.steps.two", "ivle_maint.a"},
        "ivle_maint.steps.two": set(),
        "ivle_maint.procedure": {"ivle_maint.steps.one", "ivle_maint.b"},
        "ivle_maint.stray": set(),                           # in no layer
    }
    assert unplaced(graph, layers) == ["ivle_maint.stray"]
    assert upward_imports(graph, layers) == ["ivle_maint.a (low) -> ivle_maint.b (mid)"]
    assert step_importers(graph) == ["ivle_maint.b -> ivle_maint.steps.one"]
    clean = {name: deps - {"ivle_maint.b", "ivle_maint.steps.one"} if name in
             ("ivle_maint.a", "ivle_maint.b") else deps
             for name, deps in graph.items() if name != "ivle_maint.stray"}
    assert (unplaced(clean, layers), upward_imports(clean, layers), step_importers(clean)) \
        == ([], [], [])


# The command line parses its arguments without loading the library: there,
# and only there, ivle_maint modules are imported inside functions.
LAZY_BY_DESIGN = ("ivle_maint.cli", "ivle_maint.commands")


# psycopg2 (pgdriver): the gates that wait on a connection (gates/waits.py)
# load it when a connection exists, not with themselves: every command loads
# the gates, and `settings` or `--help` need no database driver.
LAZY_DRIVER = "ivle_maint.pgdriver"


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
                          imported(node, name, path.name == "__init__.py", known)
                          if dep != LAZY_DRIVER}
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


DRIVER = "psycopg2"


def driver_importers(package: Path = PACKAGE) -> list[str]:
    """The modules but pgdriver that import psycopg2 (or a module of it)
    themselves, anywhere in their code: the first import of psycopg2 would
    decide how it loads (pgdriver.py: without ssl)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package)
        if name == LAZY_DRIVER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(m == DRIVER or m.startswith(DRIVER + ".") for m in modules):
                found.append(f"{name}:{node.lineno}")
    return found


def test_only_pgdriver_imports_psycopg2():
    found = driver_importers()
    assert not found, "psycopg2 imported past pgdriver.py: " + ", ".join(found)


def test_the_driver_checker_finds_each_way_of_importing_psycopg2(tmp_path):
    package = tmp_path / "ivle_maint"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pgdriver.py").write_text("import psycopg2\n")
    (package / "a.py").write_text("import os, psycopg2.errors\n")
    (package / "b.py").write_text("def f():\n    from psycopg2 import sql\n")
    (package / "c.py").write_text("from .pgdriver import psycopg2\nimport psycopg2x\n")
    (package / "d.py").write_text("import importlib\nx = 'psycopg2'\n")
    assert driver_importers(package) == ["ivle_maint.a:1", "ivle_maint.b:2"]
