"""The import rule of docs/ARCHITECTURE.md: one-way arrows between labkit's parts, no cycle,
no private name used outside its module, no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

LABKIT = Path(__file__).resolve().parents[1] / "labkit"

# A part may import only parts of a lower layer (and itself).
LAYERS = {
    "labkit.io": 0, "labkit.paths": 0, "labkit.profiles": 0, "labkit.metrics": 0,
    "labkit.runs": 1, "labkit.data": 1,
    "labkit.viz": 2, "labkit.torch_utils": 2, "labkit.tf_utils": 2,
    "labkit.exercises": 3, "labkit.doctor": 3,
    "labkit.hub": 3, "labkit.class_results": 3,  # entry points that run deploy/ scripts
    "labkit.labs": 4,
    "labkit.train": 5, "labkit.__main__": 5,
}


def _module(path: Path) -> str:
    parts = path.relative_to(LABKIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported module, imported name or '')}} for every labkit import."""
    found = {}
    for path in LABKIT.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labkit"):
                names.update((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update((alias.name, "") for alias in node.names if alias.name.startswith("labkit"))
        found[_module(path)] = names
    return found


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _target(module: str, name: str, known: set[str]) -> str:
    """``from labkit import runs`` imports the module labkit.runs, not a name of labkit."""
    return f"{module}.{name}" if f"{module}.{name}" in known else module


def test_every_part_has_a_layer():
    assert {_part(module) for module in _imports()} - {"labkit"} <= set(LAYERS)


def test_imports_point_down_the_layers():
    imports = _imports()
    known = set(imports)
    wrong = []
    for module, names in imports.items():
        for imported, name in names:
            target = _part(_target(imported, name, known))
            if module == "labkit" or target == "labkit" or _part(module) == target:
                continue
            if LAYERS[_part(module)] <= LAYERS[target]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers of docs/ARCHITECTURE.md: " + "; ".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    imports = _imports()
    known = set(imports)
    graph = {module: {_target(imported, name, known) for imported, name in names} & known - {module}
             for module, names in imports.items()}
    graph = {module: {target for target in targets if target != "labkit"} for module, targets in graph.items()}
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_private_name_is_imported_from_another_module():
    private = sorted(f"{module} imports {imported}.{name}" for module, names in _imports().items()
                     for imported, name in names if name.startswith("_") and not name.startswith("__"))
    assert not private


def test_no_labkit_module_is_over_500_lines():
    long = {str(path.relative_to(LABKIT.parent)): count for path in LABKIT.rglob("*.py")
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"split these modules: {long}"
