"""The package's import structure: no import cycles, and no module reaching up to a higher floor.

Layering keeps the lower floors (errors, metrics, data, models) reusable without the training
machinery: a notebook, another project or a quick script can import a dataset, a metric or a
model without pulling in run folders, tasks, training loops or the command line. The floor
table below says which modules may lean on which; a new module must be given a floor, so that
where it sits is decided, not drifted into.

A cycle means two modules cannot be understood, tested or changed apart, and makes the order in
which Python happens to import them matter. Cycles are searched among the explicit imports only.
Importing `cnnrnn.pkg.mod` also runs `cnnrnn/pkg/__init__.py` first, but that implied edge is left
out: a package's own modules routinely import their siblings while the package `__init__`
re-exports them, and every import would otherwise reach `cnnrnn/__init__.py` on the top floor.

Imports are read with `ast`, without importing anything: top-level imports and imports inside
functions alike (a lazy import still ties the two modules together). The walker takes the package
folder as an argument, so the last test can run it on a small synthetic package and check that
it does find violations and cycles.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "cnnrnn"

# Floors, lowest first. A module may import modules on its own floor or below, never above.
# "pkg.*" stands for every module of the package pkg; list "pkg" too for its __init__.
FLOORS: dict[int, tuple[str, ...]] = {
    # 0: the exception hierarchy that every other module raises from, and the version
    0: ("cnnrnn.errors", "cnnrnn.version"),
    # 1: leaf utilities: progress reporting, devices and autocast, CPU threads, atomic files
    #    and recipe paths, field checking, reading image files, class hierarchies from files,
    #    and the metrics, which work on plain arrays
    1: (
        "cnnrnn.hierarchy",
        "cnnrnn.progress",
        "cnnrnn.precision",
        "cnnrnn.threads",
        "cnnrnn.files",
        "cnnrnn.schema",
        "cnnrnn.images",
        "cnnrnn.distributed",
        "cnnrnn.metrics",
        "cnnrnn.metrics.*",
    ),
    # 2: reading and writing things: checkpoints, the Fashion-MNIST data and mosaics, plots,
    #    class-cost matrices; statistics over the metrics of several runs
    2: ("cnnrnn.checkpoint", "cnnrnn.data", "cnnrnn.data.*", "cnnrnn.plots", "cnnrnn.costs",
        "cnnrnn.stats"),
    # 3: the networks and their registry; class trees made from cost matrices
    3: ("cnnrnn.models", "cnnrnn.models.*", "cnnrnn.trees"),
    # 4: what a training run is made of on top of the models: its configuration and its losses
    4: ("cnnrnn.config", "cnnrnn.losses"),
    # 5: the run folder, owning its files and the resume policy
    5: ("cnnrnn.run_dir",),
    # 6: the tasks (single-label, multilabel) that tie data, models, losses and metrics together
    6: ("cnnrnn.tasks", "cnnrnn.tasks.*"),
    # 7: the training loop and what it logs to (steps.csv, TensorBoard), evaluation of trained
    #    runs and printed reports
    7: ("cnnrnn.train", "cnnrnn.tracking", "cnnrnn.evaluate", "cnnrnn.report"),
    # 8: work composed of whole trainings and evaluations: encoder preparation, a training
    #    launched whole (cnnrnn.launch), analyses, the benchmark of training steps and data
    #    pipelines
    8: ("cnnrnn.encoders", "cnnrnn.launch", "cnnrnn.bench", "cnnrnn.time_to_accuracy",
        "cnnrnn.analysis", "cnnrnn.analysis.*"),
    # 9: the command line
    9: ("cnnrnn.cli",),
    # 10: the entry points: `python -m cnnrnn` and the package's own __init__
    10: ("cnnrnn.__main__", "cnnrnn"),
}


@dataclass(frozen=True)
class Import:
    """One explicit import of a package module by another module of the package."""

    importer: str
    imported: str
    path: Path
    line: int
    text: str

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}: {self.text}"


def module_name(root: Path, path: Path) -> str:
    """The dotted name of `path`, a .py file under the package folder `root`."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the package in `root`, by dotted name; a package is its __init__.py."""
    return {module_name(root, path): path for path in sorted(root.rglob("*.py"))}


def _existing(name: str, modules: Mapping[str, Path]) -> str:
    """`name` if it is a module of the package, else its longest prefix that is one."""
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _resolve(
    node: ast.Import | ast.ImportFrom, importer: str, modules: Mapping[str, Path], package: str
) -> list[str]:
    """The package modules that one import statement names."""
    if isinstance(node, ast.Import):
        return [
            _existing(alias.name, modules)
            for alias in node.names
            if _in_package(alias.name, package)
        ]
    if node.level:
        # relative: `from . import x` in a package's __init__ is relative to the package itself
        base = importer.split(".")
        if modules[importer].name != "__init__.py":
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    if not _in_package(source, package):
        return []
    source = _existing(source, modules)
    # `from cnnrnn.models import registry` names the submodule when there is one
    return [
        f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
        for alias in node.names
    ]


def collect_imports(root: Path) -> list[Import]:
    """Every explicit import, at any depth of any module under `root`, of a module of the
    package (the package being `root.name`). Imports of the importer itself are left out."""
    modules = find_modules(root)
    found: list[Import] = []
    for importer, path in modules.items():
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            text = " ".join((ast.get_source_segment(source, node) or ast.unparse(node)).split())
            for imported in sorted(set(_resolve(node, importer, modules, root.name))):
                if imported != importer:
                    found.append(Import(importer, imported, path, node.lineno, text))
    return sorted(found, key=lambda i: (i.importer, i.line, i.imported))


def import_graph(imports: Iterable[Import]) -> dict[str, set[str]]:
    """Importer -> the modules it imports explicitly (no implied parent-package edges)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.imported)
        graph.setdefault(imp.imported, set())
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The groups of modules that all reach each other, sorted (Tarjan's algorithm); a module
    importing itself is a group of one."""
    edges = _edges(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(groups)


def _edges(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    edges = {node: sorted(targets) for node, targets in graph.items()}
    for targets in list(edges.values()):
        for target in targets:
            edges.setdefault(target, [])
    return edges


def shortest_cycle(graph: Mapping[str, Iterable[str]], group: list[str]) -> list[str]:
    """The shortest cycle [a, b, ..., a] from the first module of `group`, a strongly connected
    group, back to itself (breadth-first within the group)."""
    edges = _edges(graph)
    members = set(group)
    start = group[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while start not in previous:
        following: list[str] = []
        for node in frontier:
            for target in edges[node]:
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    path = [start]
    while previous[path[-1]] != start:
        path.append(previous[path[-1]])
    path.append(start)
    return path[::-1]


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle, spelled [a, b, ..., a], for every strongly connected group of modules;
    empty when the graph has no cycle."""
    return [shortest_cycle(graph, group) for group in strongly_connected(graph)]


def describe_cycles(imports: list[Import], root: Path) -> list[str]:
    """Each cycle as `a -> b -> a`, with the import statements that make up its edges and,
    when more modules are caught in the same knot, all of them."""
    graph = import_graph(imports)
    by_edge: dict[tuple[str, str], list[Import]] = {}
    for imp in imports:
        by_edge.setdefault((imp.importer, imp.imported), []).append(imp)
    lines: list[str] = []
    for group in strongly_connected(graph):
        cycle = shortest_cycle(graph, group)
        lines.append(" -> ".join(cycle))
        for edge in zip(cycle, cycle[1:], strict=False):
            lines.extend(f"    {imp.where(root)}" for imp in by_edge[edge])
        if len(group) > len(cycle) - 1:
            lines.append(
                f"    modules that all import each other, directly or not: {', '.join(group)}"
            )
    return lines


def floor_of(name: str, floors: Mapping[int, Iterable[str]] = FLOORS) -> int | None:
    """The floor of module `name`, or None when the table does not place it."""
    for floor, patterns in floors.items():
        for pattern in patterns:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return floor
    return None


def unplaced_modules(root: Path, floors: Mapping[int, Iterable[str]] = FLOORS) -> list[str]:
    """A message for every module of the package that the floor table does not place."""
    return [
        f"{name} ({path.relative_to(root.parent)}) has no floor: give it one in FLOORS "
        "in tests/test_layers.py"
        for name, path in find_modules(root).items()
        if floor_of(name, floors) is None
    ]


def floor_violations(
    imports: Iterable[Import], root: Path, floors: Mapping[int, Iterable[str]] = FLOORS
) -> list[str]:
    """A message for every import of a module on a higher floor than the importer's."""
    violations: list[str] = []
    for imp in imports:
        low, high = floor_of(imp.importer, floors), floor_of(imp.imported, floors)
        if low is not None and high is not None and high > low:
            violations.append(
                f"{imp.importer} (floor {low}) imports {imp.imported} (floor {high})"
                f"  [{imp.where(root)}]"
            )
    return violations


def test_no_import_cycles() -> None:
    imports = collect_imports(PACKAGE_ROOT)
    assert imports, f"found no imports of cnnrnn modules under {PACKAGE_ROOT}"
    cycles = find_cycles(import_graph(imports))
    assert not cycles, "import cycles among cnnrnn's modules:\n" + "\n".join(
        describe_cycles(imports, PACKAGE_ROOT)
    )


def test_no_module_imports_a_higher_floor() -> None:
    assert find_modules(PACKAGE_ROOT), f"found no modules under {PACKAGE_ROOT}"
    problems = unplaced_modules(PACKAGE_ROOT)
    problems += floor_violations(collect_imports(PACKAGE_ROOT), PACKAGE_ROOT)
    assert not problems, "layering broken:\n" + "\n".join(problems)


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")


def test_checker_finds_violations_and_cycles(tmp_path: Path) -> None:
    root = tmp_path / "cnnrnn"
    _write(
        root,
        {
            "__init__.py": "",
            # floor 0 reaching up to floor 9
            "errors.py": "import cnnrnn.cli\n",
            "cli.py": "from cnnrnn import errors\n",
            # a cycle through a submodule named in `from pkg import mod` and a relative,
            # function-level import
            "data/__init__.py": "from cnnrnn.data.loader import Loader\n",
            "data/loader.py": "from cnnrnn.data import priors\n\nclass Loader: ...\n",
            "data/priors.py": "def load():\n    from .loader import Loader\n    return Loader\n",
            # a function-level import of a higher floor, and `from pkg import name` of a
            # name that is no submodule, which stands for the package's __init__
            "metrics/__init__.py": "",
            "metrics/arrays.py": (
                "import os\n\n"
                "def as_array():\n"
                "    from cnnrnn.models import build\n"
                "    return build\n"
            ),
            "models/__init__.py": "from cnnrnn.models.registry import build\n",
            "models/registry.py": "from cnnrnn.errors import CnnrnnError\n\ndef build(): ...\n",
            # a package whose __init__ re-exports its modules: no cycle through the implied
            # import of the package
            "tasks/__init__.py": "from cnnrnn.tasks.base import Task\n",
            "tasks/base.py": "import cnnrnn.models.registry\n\nclass Task: ...\n",
            # a module the table does not place
            "newcomer.py": "from cnnrnn.errors import CnnrnnError\n",
        },
    )

    imports = collect_imports(root)
    edges = {(imp.importer, imp.imported) for imp in imports}
    assert ("cnnrnn.data.loader", "cnnrnn.data.priors") in edges
    assert ("cnnrnn.data.priors", "cnnrnn.data.loader") in edges
    assert ("cnnrnn.metrics.arrays", "cnnrnn.models") in edges
    assert ("cnnrnn.cli", "cnnrnn.errors") in edges
    assert not any(imported == "os" for _, imported in edges)

    cycles = find_cycles(import_graph(imports))
    assert cycles == [
        ["cnnrnn.cli", "cnnrnn.errors", "cnnrnn.cli"],
        ["cnnrnn.data.loader", "cnnrnn.data.priors", "cnnrnn.data.loader"],
    ]
    described = describe_cycles(imports, root)
    assert "cnnrnn.data.loader -> cnnrnn.data.priors -> cnnrnn.data.loader" in described
    assert "    cnnrnn/data/priors.py:2: from .loader import Loader" in described

    violations = floor_violations(imports, root)
    assert [v.split("  [")[0] for v in violations] == [
        "cnnrnn.errors (floor 0) imports cnnrnn.cli (floor 9)",
        "cnnrnn.metrics.arrays (floor 1) imports cnnrnn.models (floor 3)",
    ]
    assert violations[1].endswith("[cnnrnn/metrics/arrays.py:4: from cnnrnn.models import build]")

    unplaced = unplaced_modules(root)
    assert len(unplaced) == 1 and unplaced[0].startswith("cnnrnn.newcomer (cnnrnn/newcomer.py)")
    assert "give it one in FLOORS" in unplaced[0]
