#!/usr/bin/env python
"""Write student notebooks: solutions replaced by stubs, outputs cleared (``make student``).

Each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region becomes one line with the region's
indentation::

    raise NotImplementedError("Exercise 3: Dice loss")

Exercises are counted in notebook order, one number per cell that holds solution regions.
The title is the text after ``# BEGIN SOLUTION:`` when given, else the title the next check
cell printed (``Exercise 2 (Dice loss): correct``), else the nearest ``Exercise N: title``
markdown heading above the cell, else the cell's first comment line, else the first comment
inside the region. A ``figures/`` folder beside the notebooks is copied
too, so images in the markdown still show.

Usage:
    python data_scripts/make_student_notebooks.py --out build/student notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from pathlib import Path

from labkit.notebook_tools import (
    NotebookError,
    clear_outputs,
    describe_cell,
    exercise_title,
    is_check_cell,
    output_text,
    read_notebook,
    replace_solutions,
    solution_regions,
    source_of,
    write_notebook,
)

CHECK_LINE = re.compile(r"^Exercise (?P<number>\d+) \((?P<title>.+?)\):")


def make_student_notebook(notebook, path: str | Path = "notebook"):
    """A student copy of ``notebook``: stubs instead of solutions, no outputs, no execution counts.

    Args:
        notebook: the instructor notebook (left unchanged).
        path: the notebook's path, used in error messages.

    Returns:
        ``(student_notebook, number_of_exercises)``.

    Raises:
        NotebookError: unbalanced or nested solution markers (names the notebook and the cell).
    """
    student = copy.deepcopy(notebook)
    number, markdown_since_last = 0, ""
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "markdown":
            markdown_since_last += "\n" + source_of(cell)
            continue
        if cell.cell_type != "code":
            continue
        where = describe_cell(path, index, cell)
        source = source_of(cell)
        if not solution_regions(source, where):
            continue
        number += 1
        title = _title_from_check(student.cells, index) or exercise_title(source, markdown_since_last)
        cell.source = replace_solutions(source, number, title, where)
        markdown_since_last = ""
    clear_outputs(student, keep_check_outputs=False)
    return student, number


def _title_from_check(cells, index: int) -> str | None:
    """The title the next check cell printed ("Exercise 2 (Dice loss): correct" -> "Dice loss")."""
    following = next((cell for cell in cells[index + 1:] if cell.cell_type == "code"), None)
    if following is None or not is_check_cell(following):
        return None
    for output in following.get("outputs", []):
        match = CHECK_LINE.match(output_text(output))
        if match:
            return match["title"]
    return None


def _copy_figures(notebook_dir: Path, out_dir: Path) -> None:
    figures = notebook_dir / "figures"
    if figures.is_dir() and figures.resolve() != (out_dir / "figures").resolve():
        shutil.copytree(figures, out_dir / "figures", dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="instructor notebooks")
    parser.add_argument("--out", type=Path, default=Path("build/student"), help="output folder")
    args = parser.parse_args(argv)
    failures = 0
    for path in args.notebooks:
        try:
            student, count = make_student_notebook(read_notebook(path), path)
        except NotebookError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        target = args.out / path.name
        write_notebook(student, target)
        _copy_figures(path.parent, args.out)
        print(f"{target}: {count} exercise(s) turned into stubs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
