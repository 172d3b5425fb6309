"""The package's import graph, read from the source with ``ast`` (nothing is imported): the training core knows
no task, the optimizer needs nothing of the suite, the two tasks stay apart, and no two parts import each other.

Every import counts, the lazy ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The parts whose imports are ruled on: a module belongs to the longest of these its name starts with.
PARTS = ("dualadam.training", "dualadam.tasks.image", "dualadam.tasks.llm", "dualadam.tasks", "dualadam.compare",
         "dualadam.reporting", "dualadam.analysis", "dualadam.optim", "dualadam.integrations")
CORE_MUST_NOT_IMPORT = ("dualadam.tasks", "dualadam.compare", "dualadam.reporting")
# ``dualadam.analysis`` is a torch-only library of measurements (Hessian, loss landscapes) that the core's final
# sharpness (training/final_analysis.py) calls, as the core calls ``dualadam.optim``: it sits below the core, so
# it must import nothing of the suite above it.
ANALYSIS_MUST_NOT_IMPORT = ("dualadam.training", "dualadam.tasks", "dualadam.compare", "dualadam.reporting")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for each import in the file, relative imports resolved against ``name``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node.lineno
            # `from dualadam.tasks import llm` imports the submodule dualadam.tasks.llm
            yield from ((f"{base}.{alias.name}", node.lineno) for alias in node.names)


def import_edges(root: Path, package: str = "dualadam") -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every import of a module of ``package`` under ``root``."""
    edges = []
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        known = {module_name(p, root) for p in (root / package).rglob("*.py")}
        for imported, line in imported_modules(path, name):
            if imported in known:   # a name imported from a module (not a submodule) is dropped here
                edges.append((name, imported, line))
    return edges


def part_of(module: str) -> str:
    return max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len, default=module)


def violations(edges: list[tuple[str, str, int]], importer_part: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{a} (line {line}) imports {b}" for a, b, line in edges
            if part_of(a) == importer_part and any(b == f or b.startswith(f + ".") for f in forbidden)]


def part_cycles(edges: list[tuple[str, str, int]]) -> list[list[str]]:
    """The cycles among parts (``PARTS`` and the top-level modules), each as a closed path of part names."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        if part_of(a) != part_of(b):
            graph.setdefault(part_of(a), set()).add(part_of(b))
    cycles, done = [], set()

    def visit(part: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(part, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(part)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return cycles


def rule_breaks(edges: list[tuple[str, str, int]]) -> dict[str, list]:
    suite = tuple(p for p in PARTS if p != "dualadam.optim") + ("dualadam",)
    return {
        "the training core imports a task or a consumer of the core": violations(
            edges, "dualadam.training", CORE_MUST_NOT_IMPORT),
        "the measurement library imports the suite above it": violations(
            edges, "dualadam.analysis", ANALYSIS_MUST_NOT_IMPORT),
        "the optimizer imports the suite": [v for v in violations(edges, "dualadam.optim", suite)
                                            if not v.endswith(" dualadam.optim") and " dualadam.optim." not in v],
        "the image task imports the LLM task": violations(edges, "dualadam.tasks.image", ("dualadam.tasks.llm",)),
        "the LLM task imports the image task": violations(edges, "dualadam.tasks.llm", ("dualadam.tasks.image",)),
        "parts import each other": part_cycles(edges),
    }


def test_the_package_keeps_its_import_rules():
    edges = import_edges(REPO)
    assert len(edges) > 100   # the graph was read (a parse that found nothing would pass every rule)
    broken = {rule: found for rule, found in rule_breaks(edges).items() if found}
    assert broken == {}


@pytest.mark.parametrize("where, line, rule", [
    ("training/trainer.py", "from dualadam.tasks import build_task", "the training core imports"),
    ("training/metrics.py", "from dualadam.reporting.statistics import *", "the training core imports"),
    ("optim/schedules.py", "from dualadam.training import metrics", "the optimizer imports the suite"),
    ("analysis/hessian.py", "from dualadam.tasks.image import checks", "the measurement library imports"),
    ("tasks/llm/loaders.py", "from dualadam.tasks.image.data import loaders", "the LLM task imports the image"),
    ("tasks/image/task.py", "import dualadam.tasks.llm.answers", "the image task imports the LLM task"),
    ("reporting/plots.py", "from dualadam.compare import search", "parts import each other"),
])
def test_an_added_import_that_breaks_a_rule_is_caught(tmp_path, where, line, rule):
    """The same check on a copy of the package with one import added (``compare`` already imports
    ``reporting``, so the last case closes a cycle)."""
    copy = tmp_path / "dualadam"
    for path in (REPO / "dualadam").rglob("*.py"):
        target = copy / path.relative_to(REPO / "dualadam")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    target = copy / where
    target.write_text(target.read_text() + f"\n\ndef added():\n    {line}\n")
    broken = [name for name, found in rule_breaks(import_edges(tmp_path)).items() if found]
    assert any(name.startswith(rule) for name in broken), broken
