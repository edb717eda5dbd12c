"""Write the notebooks' lab code and exercise solutions to importable modules (``make export``).

The notebook is the single home of the model, loss and training-step code and of each
exercise's solution. For ``notebooks/NN_<lab>_<topic>.ipynb`` this writes:

- ``labkit/labs/<lab>.py``: the cells tagged ``export``, solution markers dropped and the
  solution code kept, so the module works;
- ``labkit/labs/<lab>_solutions.py``: ``SOLUTIONS[number] = (title, source)`` for each
  exercise (numbered as in the student notebooks), the source being each solution region with
  the function around it; ``ex.<name>.solution()`` prints it.

``--check`` writes nothing and exits non-zero when a file differs from what its notebook
would give (``tests/test_export.py`` runs it).

Usage:
    python -m labkit.export notebooks/01_vnet_prostate.ipynb notebooks/02_cfcm_lung.ipynb
    python -m labkit.export --check notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from pathlib import Path

from labkit.io import atomic_write_text
from labkit.notebook_tools import (
    EXPORT_TAG,
    NotebookError,
    code_cells,
    describe_cell,
    exercise_cells,
    for_each_notebook,
    lab_name,
    read_notebook,
    solution_source,
    source_of,
    strip_solution_markers,
    tags_of,
)

LABS_DIR = Path(__file__).resolve().parent / "labs"
_GENERATED = "# generated from {notebook} by `make export`; edit the notebook, not this file.\n"
_MODULE_HEADER = _GENERATED + '''\
# ruff: noqa: E402, I001
"""Lab code from {notebook}: its cells tagged ``export``.

Importable outside the notebook (tests, benchmarks, ``labkit.train``); regenerate with
``make export``.
"""
'''
_SOLUTIONS_HEADER = _GENERATED + '''\
# ruff: noqa: W291, W293
"""The exercise solutions of {notebook}, shown by ``ex.<name>.solution()``.

``SOLUTIONS[number] = (title, source)``, numbered as in the student notebooks.
"""

SOLUTIONS = {{}}
'''
_CONTENTS = {"": "cells tagged export", "_solutions": "solution regions"}


class ExportError(NotebookError):
    """An ``export`` cell that cannot go into a module (magics, syntax errors)."""


def target_for(notebook: Path, labs_dir: Path = LABS_DIR, suffix: str = "") -> Path:
    """``labkit/labs/<lab><suffix>.py`` for ``notebooks/NN_<lab>_<topic>.ipynb``."""
    return labs_dir / f"{lab_name(notebook)}{suffix}.py"


def generate(notebook: Path) -> dict[str, str | None]:
    """The text of each generated file, by suffix: ``""`` (lab module), ``"_solutions"``.

    None for a file the notebook gives nothing to (no export cells, no exercises).

    Raises:
        NotebookError: unreadable notebook, unbalanced solution markers, magics or bad syntax.
    """
    parsed = read_notebook(notebook)
    name = f"{notebook.parent.name}/{notebook.name}"
    return {"": _lab_module(notebook, parsed, name), "_solutions": _solutions_module(notebook, parsed, name)}


def _lab_module(notebook: Path, parsed, name: str) -> str | None:
    sources = [_export_source(notebook, index, cell) for index, cell in code_cells(parsed)
               if EXPORT_TAG in tags_of(cell)]
    if not sources:
        return None
    imports, bodies = [], []
    for source in sources:
        cell_imports, body = _split_leading_imports(source)
        imports += [line for line in cell_imports if line not in imports]
        if body:
            bodies.append(body)
    parts = [_MODULE_HEADER.format(notebook=name).rstrip("\n"), "\n".join(imports), *bodies]
    return "\n\n\n".join(part for part in parts if part) + "\n"


def _export_source(notebook: Path, index: int, cell) -> str:
    where = describe_cell(notebook, index, cell)
    source = strip_solution_markers(source_of(cell), where).strip("\n")
    magic = next((line for line in source.splitlines() if line.lstrip().startswith(("%", "!"))), None)
    if magic is not None:
        raise ExportError(f"{where} is tagged export but runs the IPython command {magic.strip()!r}; "
                          "move that line to a cell that is not exported")
    try:
        compile(source, where, "exec")
    except SyntaxError as error:
        raise ExportError(f"{where} is tagged export but is not valid Python "
                          f"(line {error.lineno}: {error.msg})") from error
    return source


def _split_leading_imports(source: str) -> tuple[list[str], str]:
    """A cell's leading import statements (one normalised line each) and the rest of the cell.

    Each notebook cell imports what it uses, so the module would import ``torch`` five times;
    the generated module lists every import once, at the top, in first-seen order.
    """
    lines = source.splitlines()
    imports, end = [], 0
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        imports.append(ast.unparse(node))  # one normalised line, so duplicates compare equal
        end = node.end_lineno
    between = lines[end:]
    if any(line.strip().startswith("#") for line in lines[:end]):  # comments among imports: keep as is
        return [], source
    return imports, "\n".join(between).strip("\n")


def _solutions_module(notebook: Path, parsed, name: str) -> str | None:
    exercises = exercise_cells(parsed, notebook)
    if not exercises:
        return None
    entries = [f"SOLUTIONS[{exercise.number}] = {exercise.title!r}, "
               f"{_literal(solution_source(exercise.source, exercise.where))}"
               for exercise in exercises]
    return "\n\n".join([_SOLUTIONS_HEADER.format(notebook=name), *entries]) + "\n"


def _literal(text: str) -> str:
    """``text`` as a readable triple-quoted literal (``repr`` when it cannot be one)."""
    literal = "'''\\\n" + text.replace("\\", "\\\\").replace("'''", "\\'\\'\\'") + "\n'''"
    return literal if ast.literal_eval(literal) == text + "\n" else repr(text + "\n")


def check(notebook: Path, labs_dir: Path = LABS_DIR) -> str | None:
    """None when the generated files are up to date, else a message with the start of each diff."""
    problems = []
    for suffix, expected in generate(notebook).items():
        target = target_for(notebook, labs_dir, suffix)
        actual = target.read_text(encoding="utf-8") if target.is_file() else None
        if expected == actual:
            continue
        if expected is None:
            problems.append(f"{target} exists but {notebook} has no {_CONTENTS[suffix]}: delete it")
            continue
        diff = difflib.unified_diff((actual or "").splitlines(), expected.splitlines(),
                                    str(target), f"from {notebook}", lineterm="", n=1)
        problems.append(f"{target} is out of date with {notebook}: run `make export`\n"
                        + "\n".join(list(diff)[:30]))
    return "\n".join(problems) or None


def export(notebook: Path, labs_dir: Path = LABS_DIR) -> list[Path]:
    """Write the generated files for ``notebook`` (atomically); returns the paths written."""
    return [atomic_write_text(target_for(notebook, labs_dir, suffix), text)
            for suffix, text in generate(notebook).items() if text is not None]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--labs-dir", type=Path, default=LABS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def export_one(notebook: Path) -> str | None:
        if args.check:
            problem = check(notebook, args.labs_dir)
            if problem:
                raise NotebookError(problem)
            return None
        written = export(notebook, args.labs_dir)
        if not written:
            return f"{notebook}: no cells tagged export and no exercises; nothing written"
        return f"{notebook}: wrote " + ", ".join(_shown(path) for path in written)

    return for_each_notebook(args.notebooks, export_one)


if __name__ == "__main__":
    sys.exit(main())
