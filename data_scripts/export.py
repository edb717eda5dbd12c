"""Write the notebooks' lab code and exercise solutions to importable modules (``make export``).

For ``notebooks/NN_<lab>_<topic>.ipynb``: ``labkit/labs/<lab>.py`` (the cells tagged ``export``,
marker lines dropped) and ``labkit/labs/<lab>_solutions.py`` (``SOLUTIONS[number] = (title,
source)``, shown by ``ex.<name>.solution()``). ``--check`` writes nothing and exits 1 on drift.

Usage: ``python data_scripts/export.py [--check] notebooks/*.ipynb``
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
import textwrap
from pathlib import Path

from notebook_tools import (
    EXPORT_TAG,
    NotebookError,
    code_cells,
    describe_cell,
    exercise_cells,
    for_each_notebook,
    lab_name,
    read_notebook,
    solution_regions,
    source_of,
    tags_of,
)

from labkit.io import atomic_write_text

LABS_DIR = Path(__file__).resolve().parents[1] / "labkit" / "labs"
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


def target_for(notebook: Path, labs_dir: Path = LABS_DIR, suffix: str = "") -> Path:
    """``labkit/labs/<lab><suffix>.py`` for ``notebooks/NN_<lab>_<topic>.ipynb``."""
    return labs_dir / f"{lab_name(notebook)}{suffix}.py"


def generate(notebook: Path) -> dict[str, str | None]:
    """The text of each file, by suffix (``""``: lab module, ``"_solutions"``); None for a file
    the notebook gives nothing to. Raises NotebookError naming the notebook and cell."""
    parsed, name = read_notebook(notebook), f"{notebook.parent.name}/{notebook.name}"
    return {"": _lab_module(notebook, parsed, name), "_solutions": _solutions_module(notebook, parsed, name)}


def _lab_module(notebook: Path, parsed, name: str) -> str | None:
    """The export cells, each cell's leading imports gathered once at the top (first seen first)."""
    sources = [_export_source(notebook, index, cell) for index, cell in code_cells(parsed)
               if EXPORT_TAG in tags_of(cell)]
    if not sources:
        return None
    imports, parts = [], []
    for cell_imports, body in map(_split_leading_imports, sources):
        imports += [line for line in cell_imports if line not in imports]
        parts += [body] if body else []
    parts = [_MODULE_HEADER.format(notebook=name).rstrip("\n"), "\n".join(imports), *parts]
    return "\n\n\n".join(part for part in parts if part) + "\n"


def _export_source(notebook: Path, index: int, cell) -> str:
    """The cell without its marker lines; magics and syntax errors are refused naming the cell."""
    where, lines = describe_cell(notebook, index, cell), source_of(cell).splitlines(keepends=True)
    markers = {line for region in solution_regions(source_of(cell), where) for line in region[:2]}
    source = "".join(line for number, line in enumerate(lines) if number not in markers).strip("\n")
    magic = next((line for line in source.splitlines() if line.lstrip().startswith(("%", "!"))), None)
    if magic is not None:
        raise NotebookError(f"{where} is tagged export but runs the IPython command {magic.strip()!r}; "
                            "move that line to a cell that is not exported")
    try:
        compile(source, where, "exec")
    except SyntaxError as error:
        raise NotebookError(f"{where} is tagged export but is not valid Python "
                            f"(line {error.lineno}: {error.msg})") from error
    return source


def _split_leading_imports(source: str) -> tuple[list[str], str]:
    """A cell's leading imports (one normalised line each) and the rest; with comments among the
    imports, the cell stays whole."""
    lines, imports, end = source.splitlines(), [], 0
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        imports.append(ast.unparse(node))
        end = node.end_lineno
    if any(line.strip().startswith("#") for line in lines[:end]):
        return [], source
    return imports, "\n".join(lines[end:]).strip("\n")


def _solutions_module(notebook: Path, parsed, name: str) -> str | None:
    exercises = exercise_cells(parsed, notebook)
    entries = [f"SOLUTIONS[{exercise.number}] = {exercise.title!r}, "
               f"{_literal(solution_source(exercise.source, exercise.where))}" for exercise in exercises]
    return "\n\n".join([_SOLUTIONS_HEADER.format(notebook=name), *entries]) + "\n" if entries else None


def solution_source(source: str, where: str = "this cell") -> str:
    """What ``ex.solution()`` shows for an exercise cell: each solution region with the innermost
    function around it (or alone, outside any function), markers dropped.

    Example:
        >>> print(solution_source("def f(x):\\n    # BEGIN SOLUTION\\n    return x\\n    # END SOLUTION"))
        def f(x):
            return x
    """
    lines, regions = source.splitlines(), solution_regions(source, where)
    try:
        functions = [node for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:  # IPython magics: show the regions alone
        functions = []

    def span(region) -> tuple[int, int]:  # the innermost function around it (starts last), or itself
        around = [(min(item.lineno for item in [node, *node.decorator_list]) - 1,
                   max(node.end_lineno - 1, region.end))  # the END marker may follow the last statement
                  for node in functions if node.lineno - 1 < region.begin < node.end_lineno]
        return max(around, default=(region.begin, region.end))

    spans = {span(region) for region in regions}
    markers = {line for region in regions for line in region[:2]}
    parts = ["\n".join(lines[number] for number in range(start, end + 1) if number not in markers)
             for start, end in sorted(spans)  # those inside another span are shown with it
             if not any(other != (start, end) and other[0] <= start and end <= other[1] for other in spans)]
    return "\n\n".join(textwrap.dedent(part).strip("\n") for part in parts)


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
        if expected is None and actual is not None:
            problems.append(f"{target} exists but {notebook} has no {_CONTENTS[suffix]}: delete it")
        elif expected != actual:
            diff = difflib.unified_diff((actual or "").splitlines(), expected.splitlines(),
                                        str(target), f"from {notebook}", lineterm="", n=1)
            problems.append(f"{target} is out of date with {notebook}: run `make export`\n"
                            + "\n".join(list(diff)[:30]))
    return "\n".join(problems) or None


def export(notebook: Path, labs_dir: Path = LABS_DIR) -> list[Path]:
    """Write the generated files for ``notebook`` (atomically); returns the paths written."""
    return [atomic_write_text(target_for(notebook, labs_dir, suffix), text)
            for suffix, text in generate(notebook).items() if text is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python data_scripts/export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--labs-dir", type=Path, default=LABS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def export_one(notebook: Path) -> str | None:
        if args.check:
            if problem := check(notebook, args.labs_dir):
                raise NotebookError(problem)
            return None
        written, here = export(notebook, args.labs_dir), Path.cwd().resolve()
        if not written:
            return f"{notebook}: no cells tagged export and no exercises; nothing written"
        return f"{notebook}: wrote " + ", ".join(  # below the current folder: a relative path
            str(path.resolve().relative_to(here) if path.resolve().is_relative_to(here) else path)
            for path in written)

    return for_each_notebook(args.notebooks, export_one)


if __name__ == "__main__":
    sys.exit(main())
