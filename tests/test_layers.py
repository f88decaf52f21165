"""The package's layers and its import graph, read from the source (every import, at module level
or inside a function; ``if TYPE_CHECKING:`` imports left out: they never run).

Layers, each importing only from the layers before it (README, "Layout"):
  1. errors, config, algorithm, kernels, reward
  2. data, models, generation, runs          (the parts both backends share)
  3. local, openrlhf, analysis, evaluation   (siblings: none imports another)
  4. cli
and no import circle between modules, hidden in a function or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    ("errors", "config", "algorithm", "kernels", "reward"),
    ("data", "models", "generation", "runs"),
    ("local", "openrlhf", "analysis", "evaluation"),
    ("cli",),
)
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_files() -> dict[str, Path]:
    files = {}
    for base in (ROOT / "srft_openrlhf", ROOT / "evaluation"):
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def part_of(module: str) -> str:
    """The layer part a module belongs to: srft_openrlhf.local.engine -> local, evaluation.x -> evaluation."""
    names = module.split(".")
    return "evaluation" if names[0] == "evaluation" else names[1] if len(names) > 1 else ""


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """First-party modules ``path`` imports (a package's submodule when the name is one)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: from . import x
                    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1])
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known or m.split(".")[0] in ("srft_openrlhf", "evaluation")} & known


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(path, module, known) - {module} for module, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        source = part_of(module)
        if source not in LAYER:
            continue  # srft_openrlhf/__init__.py, __main__: the package's front door
        for target in targets:
            dest = part_of(target)
            if dest not in LAYER or dest == source:
                continue
            if LAYER[dest] > LAYER[source] or (LAYER[dest] == LAYER[source] and LAYER[source] == 2):
                bad.append(f"{module} ({source}, layer {LAYER[source] + 1}) imports {target} (layer {LAYER[dest] + 1})")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def without_package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A submodule importing its own package's ``__init__`` (for a re-exported name) is no circle
    when the ``__init__`` imports the submodule only to re-export: Python runs the package first."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_every_part_has_a_layer():
    parts = {part_of(m) for m in module_files()} - {""}
    assert parts - set(LAYER) == set(), "a new subpackage needs a layer in LAYERS (and in the README)"


def test_each_layer_imports_only_the_layers_before_it():
    assert layer_violations(import_graph()) == []


def test_no_import_circles():
    assert circles(without_package_parents(import_graph())) == []


@pytest.mark.parametrize(
    "module, target",
    [
        ("srft_openrlhf.openrlhf.launcher", "srft_openrlhf.local.trainer"),  # cluster backend reaching into local
        ("srft_openrlhf.analysis.scoring", "srft_openrlhf.local.engine"),
        ("srft_openrlhf.runs.records", "srft_openrlhf.local.metrics"),  # shared layer reaching up
        ("srft_openrlhf.models", "srft_openrlhf.generation"),  # one shared part on another: allowed
    ],
)
def test_a_planted_import_is_caught(module, target):
    """The checks fail on the imports they exist to forbid (and let the allowed one through)."""
    graph = import_graph()
    graph[module] = graph[module] | {target}
    allowed = part_of(module) in ("models",) and part_of(target) == "generation"
    assert (layer_violations(graph) == []) == allowed


def test_a_planted_circle_is_caught():
    graph = import_graph()
    assert "srft_openrlhf.data.loading" in graph["srft_openrlhf.data.sources"]
    graph["srft_openrlhf.data.loading"] = graph["srft_openrlhf.data.loading"] | {"srft_openrlhf.data.sources"}
    assert ["srft_openrlhf.data.loading", "srft_openrlhf.data.sources"] in circles(without_package_parents(graph))


def test_function_level_imports_count():
    """An import inside a function is an edge too (the circles this test exists for hid there)."""
    graph = import_graph()
    source = (ROOT / "srft_openrlhf" / "openrlhf" / "launcher.py").read_text()
    tree = ast.parse(source)
    inner = {
        node.module
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srft_openrlhf.")
    }
    assert inner and inner <= graph["srft_openrlhf.openrlhf.launcher"] | {
        t.rsplit(".", 1)[0] for t in graph["srft_openrlhf.openrlhf.launcher"]
    }


def test_every_module_is_tracked_by_git():
    """A module the .gitignore hides (as ``runs/`` once hid ``srft_openrlhf/runs/``) imports fine here
    and is missing from every clone."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "srft_openrlhf", "evaluation", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [p for p in ignored if p.endswith(".py")] == []
