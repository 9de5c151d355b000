"""The experiment package's structure: no import cycle, no private name imported from
another module, and the executors never import the sweep (they hear nothing of it but the
contract)."""

from __future__ import annotations

import ast
from pathlib import Path

import normlab.experiment

PACKAGE = Path(normlab.experiment.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["normlab", "experiment", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every ``from module import name`` and ``import module`` in ``path``,
    anywhere in the file (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, imported in _imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in modules else module
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_no_import_cycle_in_the_experiment_package():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            assert state.get(child) != "open", " -> ".join([*path, node, child])
            if child not in state:
                visit(child, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{name} imports {imported} from {module}"
        for name, path in _modules().items()
        for module, imported in _imports(path)
        if module.startswith("normlab") and imported and imported.startswith("_")
    ]
    assert private == []


def test_executors_know_the_contract_not_the_sweep():
    for name in _modules():
        if name.startswith("normlab.experiment.executors"):
            assert "normlab.experiment.sweep" not in _graph()[name], name
