#!/usr/bin/env python
"""Write student notebooks: solutions replaced by stubs, outputs cleared (``make student``).

Each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region becomes one line with the region's
indentation::

    raise NotImplementedError("Exercise 3: Dice loss")

Exercises are counted in notebook order, one number per cell that holds solution regions.
The title is the text after ``# BEGIN SOLUTION:`` when given, else the title the next check
cell printed (``Exercise 2 (Dice loss): correct``), else the nearest ``Exercise N: title``
markdown heading above the cell (``notebook_tools.exercise_cells``). A ``figures/``
folder beside the notebooks is copied too, so images in the markdown still show.

Usage:
    python data_scripts/make_student_notebooks.py --out build/student notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

from notebook_tools import (
    clear_outputs,
    exercise_cells,
    for_each_notebook,
    read_notebook,
    solution_regions,
    write_notebook,
)


def replace_solutions(source: str, number: int, title: str, where: str = "this cell") -> str:
    """Replace each solution region by one ``raise NotImplementedError("Exercise N: title")`` line
    with the region's indentation (a title on the marker wins for its region)."""
    lines = source.splitlines()
    for region in reversed(solution_regions(source, where)):
        message = json.dumps(f"Exercise {number}: {region.title or title}", ensure_ascii=False)
        lines[region.begin:region.end + 1] = [f"{region.indent}raise NotImplementedError({message})"]
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")


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
    exercises = exercise_cells(student, path)
    for exercise in exercises:
        student.cells[exercise.index].source = replace_solutions(
            exercise.source, exercise.number, exercise.title, exercise.where)
    clear_outputs(student, keep_check_outputs=False)
    return student, len(exercises)


def _copy_figures(notebook_dir: Path, out_dir: Path) -> None:
    figures = notebook_dir / "figures"
    if figures.is_dir() and figures.resolve() != (out_dir / "figures").resolve():
        shutil.copytree(figures, out_dir / "figures", dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="instructor notebooks")
    parser.add_argument("--out", type=Path, default=Path("build/student"), help="output folder")
    args = parser.parse_args(argv)

    def write_student_copy(path: Path) -> str:
        student, count = make_student_notebook(read_notebook(path), path)
        target = write_notebook(student, args.out / path.name)
        _copy_figures(path.parent, args.out)
        return f"{target}: {count} exercise(s) turned into stubs"

    return for_each_notebook(args.notebooks, write_student_copy)


if __name__ == "__main__":
    sys.exit(main())
