"""Reading, cleaning and inspecting the course notebooks (no kernel, no framework imports), by
the conventions of docs/ARCHITECTURE.md (Notebooks). Messages name a cell as ``cell N`` (from 1)
and its first line, e.g. ``cell 12 ("def dice_loss(...")``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import nbformat

from labkit.io import atomic_write_text

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
FAILED_CHECK = re.compile(r": (not yet -|not implemented yet|your code raised )")  # a check's verdict
PARAMETERS_TAG, SETUP_TAG, EXPORT_TAG = "parameters", "setup", "export"

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b[ \t]*[:\-]?[ \t]*(?P<title>.*?)\s*$")
_END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
_MARKDOWN_EXERCISE = re.compile(r"^#+\s*exercise\s*\d*\s*[:.\-\u2013\u2014)]+\s*(?P<title>.+?)\s*$",
                                re.IGNORECASE | re.MULTILINE)
_CHECK_LINE = re.compile(r"^Exercise \d+ \((?P<title>.+?)\):")


class NotebookError(ValueError):
    """A notebook that cannot be read or breaks a course convention; the message says what to do."""


class SolutionRegion(NamedTuple):
    """One solution region: its marker lines (0-based, inclusive), indentation and title."""

    begin: int
    end: int
    indent: str
    title: str


class ExerciseCell(NamedTuple):
    """A code cell with solution regions: exercise ``number``, its title, cell index and source."""

    number: int
    title: str
    index: int
    where: str
    source: str


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read a notebook as nbformat 4; a missing or broken file is a NotebookError naming it."""
    if not Path(path).is_file():
        raise NotebookError(f"{path}: no such notebook; check the path (notebooks live in notebooks/)")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises json, validation and reader errors
        raise NotebookError(f"{path}: not a readable Jupyter notebook ({error}); "
                            "restore it with `git checkout` or re-save it from JupyterLab") from error


def write_notebook(notebook, path: str | Path) -> Path:
    """Write ``notebook`` atomically (a crash never leaves half a notebook)."""
    return atomic_write_text(path, nbformat.writes(notebook, version=4).rstrip("\n") + "\n")


def source_of(cell) -> str:
    """A cell's source as one string (it may be stored as a list of lines)."""
    return "".join(cell.get("source", ""))


def tags_of(cell) -> list[str]:
    """A cell's ``metadata.tags``."""
    return list(cell.get("metadata", {}).get("tags", []))


def output_text(output) -> str:
    """The text of one output (stream text, text/plain, error name and value)."""
    if output.get("output_type") == "error":
        return f"{output.get('ename', '')}: {output.get('evalue', '')}"
    return "".join(output.get("text", "") if output.get("output_type") == "stream"
                   else output.get("data", {}).get("text/plain", ""))


def describe_cell(notebook_path: str | Path, index: int, cell) -> str:
    """``notebooks/x.ipynb, cell 12 ("first line")`` (1-based cell number) for messages."""
    first = next((line.strip() for line in source_of(cell).splitlines() if line.strip()), "")
    return f'{notebook_path}, cell {index + 1} ("{first if len(first) <= 60 else first[:57] + "..."}")'


def code_cells(notebook) -> list[tuple[int, dict]]:
    """``(index, cell)`` for every code cell, in notebook order."""
    return [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def is_check_cell(cell) -> bool:
    """True for a code cell whose source starts with ``# NBVAL_CHECK_OUTPUT``."""
    return cell.get("cell_type") == "code" and source_of(cell).lstrip().startswith(CHECK_MARKER)


def lab_name(notebook_path: str | Path) -> str:
    """The lab a notebook belongs to: ``01_vnet_prostate.ipynb`` -> ``vnet``."""
    match = re.match(r"^\d+_([a-z0-9]+)(_|\.|$)", Path(notebook_path).name)
    if not match:
        raise NotebookError(f"{notebook_path}: cannot tell the lab from the file name; "
                            "name notebooks NN_<lab>_<topic>.ipynb, e.g. 01_vnet_prostate.ipynb")
    return match.group(1)


def solution_regions(source: str, where: str = "this cell") -> list[SolutionRegion]:
    """The solution regions of one cell's source; a ``BEGIN`` without ``END``, an ``END`` without
    ``BEGIN`` or nested regions are a NotebookError naming the cell (``where``)."""
    regions, opened = [], None
    for number, line in enumerate(source.splitlines()):
        if begin := _BEGIN.match(line):
            if opened:
                raise NotebookError(f"{where}: '# BEGIN SOLUTION' on line {number + 1} before the region "
                                    f"opened on line {opened[0] + 1} was closed; add '# END SOLUTION'")
            opened = number, begin
        elif _END.match(line):
            if not opened:
                raise NotebookError(f"{where}: '# END SOLUTION' on line {number + 1} has no matching "
                                    "'# BEGIN SOLUTION' above it; add one or delete this line")
            regions.append(SolutionRegion(opened[0], number, opened[1]["indent"], opened[1]["title"]))
            opened = None
    if opened:
        raise NotebookError(f"{where}: '# BEGIN SOLUTION' on line {opened[0] + 1} is never closed; "
                            "add '# END SOLUTION' after the solution")
    return regions


def exercise_cells(notebook, path: str | Path = "notebook") -> list[ExerciseCell]:
    """Every exercise of ``notebook``: each code cell that holds solution regions, in order.

    The title is the one the next check cell printed (``Exercise 2 (Dice loss): correct``), else
    the nearest ``Exercise N: title`` markdown heading above the cell, else the first title
    written on a marker, else ``"write your code here"``.
    """
    found, markdown = [], ""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            markdown += "\n" + source_of(cell)
        where = describe_cell(path, index, cell)
        regions = solution_regions(source_of(cell), where) if cell.cell_type == "code" else []
        if not regions:
            continue
        titles = [_title_from_check(notebook.cells[index + 1:]), *_MARKDOWN_EXERCISE.findall(markdown)[-1:],
                  *(region.title for region in regions)]
        title = re.sub(r"[*_`]+", "", next(filter(None, titles), "")).strip().rstrip(".:")[:80]
        found.append(ExerciseCell(len(found) + 1, title or "write your code here", index, where,
                                  source_of(cell)))
        markdown = ""
    return found


def _title_from_check(following_cells) -> str | None:
    """The title the next code cell printed, when it is a check ("Exercise 2 (Dice loss): ...")."""
    check = next((cell for cell in following_cells if cell.cell_type == "code"), None)
    if check is None or not is_check_cell(check):
        return None
    matches = (_CHECK_LINE.match(output_text(output)) for output in check.get("outputs", []))
    return next((match["title"] for match in matches if match), None)


def clear_outputs(notebook, keep_check_outputs: bool = False):
    """Remove outputs and execution counts in place, optionally keeping the check cells' outputs.

    A kept check cell gets the count 1, 2, 3, ... (nbval refuses a stored output on a cell
    without one: "Unrun reference cell has outputs").
    """
    number = 0
    for _, cell in code_cells(notebook):
        cell.metadata.pop("execution", None)
        cell.execution_count = None
        if not (keep_check_outputs and is_check_cell(cell) and cell.get("outputs")):
            cell.outputs = []
            continue
        number = cell.execution_count = number + 1
        for output in cell.outputs:
            if "execution_count" in output:
                output["execution_count"] = number
    return notebook


def for_each_notebook(paths, action: Callable[[Path], str | None]) -> int:
    """The main loop of ``make export``, ``student``, ``refresh-checks`` and ``run``: prints what
    ``action(path)`` returns, or a :class:`NotebookError` as ``error: ...`` on stderr and goes on
    with the next notebook. Returns the exit status (1 when any notebook failed)."""
    status = 0
    for path in paths:
        try:
            message = action(Path(path))
        except NotebookError as error:
            message, status = None, 1
            print(f"error: {error}", file=sys.stderr, flush=True)
        if message:
            print(message, flush=True)
    return status
