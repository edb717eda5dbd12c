"""Write the notebooks' ``export`` cells to importable modules (``make export``).

The notebook is the single home of the model, loss and training-step code. Cells tagged
``export`` in ``notebooks/01_vnet_prostate.ipynb`` become ``labkit/labs/vnet.py`` and those in
``notebooks/02_cfcm_lung.ipynb`` become ``labkit/labs/cfcm.py`` (the lab is the word after the
number in the notebook's name). Solution markers are dropped and the solution code kept, so the
modules work. ``--check`` writes nothing and exits non-zero when a module differs from what
its notebook would give (``tests/test_export.py`` runs it).

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
    lab_name,
    read_notebook,
    source_of,
    strip_solution_markers,
    tags_of,
)

LABS_DIR = Path(__file__).resolve().parent / "labs"
_HEADER = '''\
# generated from {notebook} by `make export`; edit the notebook, not this file.
# ruff: noqa: E402, I001
"""Lab code from {notebook}: its cells tagged ``export``.

Importable outside the notebook (tests, benchmarks, ``labkit.train``); regenerate with
``make export``.
"""
'''


class ExportError(NotebookError):
    """An ``export`` cell that cannot go into a module (magics, syntax errors)."""


def target_for(notebook: Path, labs_dir: Path = LABS_DIR) -> Path:
    """``labkit/labs/<lab>.py`` for ``notebooks/NN_<lab>_<topic>.ipynb``."""
    return labs_dir / f"{lab_name(notebook)}.py"


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


def generate(notebook: Path) -> str | None:
    """The module text for ``notebook``'s export cells, or None when it has none.

    Raises:
        NotebookError: unreadable notebook, unbalanced solution markers, magics or bad syntax.
    """
    parsed = read_notebook(notebook)
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
    name = f"{notebook.parent.name}/{notebook.name}"
    parts = [_HEADER.format(notebook=name).rstrip("\n"), "\n".join(imports), *bodies]
    return "\n\n\n".join(part for part in parts if part) + "\n"


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


def check(notebook: Path, labs_dir: Path = LABS_DIR) -> str | None:
    """None when the generated module is up to date, else a message with the start of the diff."""
    expected, target = generate(notebook), target_for(notebook, labs_dir)
    actual = target.read_text(encoding="utf-8") if target.is_file() else None
    if expected == actual:
        return None
    if expected is None:
        return f"{target} exists but {notebook} has no cells tagged export: delete it or tag the cells"
    diff = difflib.unified_diff((actual or "").splitlines(), expected.splitlines(),
                                str(target), f"from {notebook}", lineterm="", n=1)
    shown = "\n".join(list(diff)[:30])
    return f"{target} is out of date with {notebook}: run `make export`\n{shown}"


def export(notebook: Path, labs_dir: Path = LABS_DIR) -> Path | None:
    """Write the module for ``notebook`` (atomically); None when it has no export cells."""
    text = generate(notebook)
    if text is None:
        return None
    return atomic_write_text(target_for(notebook, labs_dir), text)


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
    failures = 0
    for notebook in args.notebooks:
        try:
            if args.check:
                problem = check(notebook, args.labs_dir)
                if problem:
                    print(problem, file=sys.stderr)
                    failures += 1
                continue
            written = export(notebook, args.labs_dir)
        except NotebookError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{notebook}: " + (f"wrote {_shown(written)}" if written else "no cells tagged export; nothing written"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
