"""Reading, cleaning and inspecting the course notebooks (no kernel, no framework imports).

Shared by ``make student``, ``make refresh-checks``, ``make export``, ``make run`` and the
notebook hygiene tests. Cells are named to people as ``cell N`` counted from 1 in notebook
order, followed by the first line of their source, e.g. ``cell 12 ("def dice_loss(...")``.

Conventions (docs/ARCHITECTURE.md, Notebooks):

- solution regions sit between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines inside a code
  cell; text after ``# BEGIN SOLUTION`` (``# BEGIN SOLUTION: Dice loss``) is an optional title;
- a check cell's source starts with ``# NBVAL_CHECK_OUTPUT``; only check cells keep outputs
  (with execution counts 1, 2, 3, ...: nbval rejects stored outputs on a cell without one);
- the first code cell is tagged ``parameters``; the next code cell, tagged ``setup``, is the
  only setup cell (imports, profile, seeds);
- exercises are numbered 1, 2, ... in notebook order, one per cell with solution regions
  (:func:`exercise_cells`);
- cells tagged ``export`` are written to ``labkit/labs/<lab>.py``, and each exercise's
  solution (:func:`solution_source`) to ``labkit/labs/<lab>_solutions.py``.

Example:
    >>> regions = solution_regions("x = 1\\n# BEGIN SOLUTION\\ny = 2\\n# END SOLUTION\\n")
    >>> [(region.begin, region.end) for region in regions]
    [(1, 3)]
"""

from __future__ import annotations

import ast
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from labkit.io import atomic_write_text

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
FAILED_CHECK = re.compile(r": (not yet -|not implemented yet|your code raised )")  # a check's verdict
PARAMETERS_TAG = "parameters"
SETUP_TAG = "setup"
EXPORT_TAG = "export"
NB_VERSION = 4

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b[ \t]*[:\-]?[ \t]*(?P<title>.*?)\s*$")
_END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
_MARKDOWN_EXERCISE = re.compile(r"^#+\s*exercise\s*\d*\s*[:.\-\u2013\u2014)]+\s*(?P<title>.+?)\s*$",
                                re.IGNORECASE | re.MULTILINE)


class NotebookError(ValueError):
    """A notebook that cannot be read or breaks a course convention; the message says what to do."""


@dataclass(frozen=True)
class SolutionRegion:
    """One ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region, as 0-based line numbers (inclusive)."""

    begin: int
    end: int
    indent: str
    title: str


# ---------------------------------------------------------------- reading and writing

def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read a notebook as nbformat 4.

    Raises:
        NotebookError: the file is missing or is not a valid notebook (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such notebook; check the path (notebooks live in notebooks/)")
    try:
        return nbformat.read(path, as_version=NB_VERSION)
    except Exception as error:  # nbformat raises json, validation and reader errors
        raise NotebookError(f"{path}: not a readable Jupyter notebook ({error}); "
                            "restore it with `git checkout` or re-save it from JupyterLab") from error


def write_notebook(notebook: nbformat.NotebookNode, path: str | Path) -> Path:
    """Write ``notebook`` atomically (a crash never leaves half a notebook)."""
    text = nbformat.writes(notebook, version=NB_VERSION)
    return atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def source_of(cell) -> str:
    """A cell's source as one string (nbformat may hold it as a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def tags_of(cell) -> list[str]:
    """A cell's tags (``metadata.tags``), an empty list when there are none."""
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, list) else []


def describe_cell(notebook_path: str | Path, index: int, cell) -> str:
    """``notebooks/x.ipynb, cell 12 ("first line")`` (1-based cell number) for messages."""
    first = next((line.strip() for line in source_of(cell).splitlines() if line.strip()), "")
    if len(first) > 60:
        first = first[:57] + "..."
    return f'{notebook_path}, cell {index + 1} ("{first}")'


def code_cells(notebook) -> list[tuple[int, dict]]:
    """``(index, cell)`` for every code cell, in notebook order."""
    return [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def is_check_cell(cell) -> bool:
    """True for a code cell whose source starts with ``# NBVAL_CHECK_OUTPUT``."""
    return cell.get("cell_type") == "code" and source_of(cell).lstrip().startswith(CHECK_MARKER)


# ---------------------------------------------------------------- solution regions

def solution_regions(source: str, where: str = "this cell") -> list[SolutionRegion]:
    """The solution regions of one cell's source.

    Args:
        source: the cell source.
        where: how to name the cell in an error (see :func:`describe_cell`).

    Raises:
        NotebookError: a ``BEGIN`` without ``END``, an ``END`` without ``BEGIN``, or nested regions.
    """
    regions, open_line, open_match = [], None, None
    for number, line in enumerate(source.splitlines()):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if open_line is not None:
                raise NotebookError(f"{where}: '# BEGIN SOLUTION' on line {number + 1} before the "
                                    f"region opened on line {open_line + 1} was closed; add '# END SOLUTION'")
            open_line, open_match = number, begin
        elif end:
            if open_line is None:
                raise NotebookError(f"{where}: '# END SOLUTION' on line {number + 1} has no matching "
                                    "'# BEGIN SOLUTION' above it; add one or delete this line")
            regions.append(SolutionRegion(open_line, number, open_match["indent"], open_match["title"]))
            open_line = None
    if open_line is not None:
        raise NotebookError(f"{where}: '# BEGIN SOLUTION' on line {open_line + 1} is never closed; "
                            "add '# END SOLUTION' after the solution")
    return regions


def strip_solution_markers(source: str, where: str = "this cell") -> str:
    """The source with the marker lines removed and the solution code kept."""
    lines = source.splitlines(keepends=True)
    marker_lines = {line for region in solution_regions(source, where)
                    for line in (region.begin, region.end)}
    return "".join(line for number, line in enumerate(lines) if number not in marker_lines)


def stub_line(indent: str, number: int, title: str) -> str:
    """The line that replaces a solution region in a student notebook."""
    message = json.dumps(f"Exercise {number}: {title}", ensure_ascii=False)  # a valid Python literal
    return f"{indent}raise NotImplementedError({message})"


def replace_solutions(source: str, number: int, title: str, where: str = "this cell") -> str:
    """Replace every solution region in ``source`` by :func:`stub_line` (same indentation)."""
    lines = source.splitlines()
    regions = solution_regions(source, where)
    for region in reversed(regions):
        lines[region.begin:region.end + 1] = [stub_line(region.indent, number, region.title or title)]
    text = "\n".join(lines)
    return text + "\n" if source.endswith("\n") else text


CHECK_LINE = re.compile(r"^Exercise (?P<number>\d+) \((?P<title>.+?)\):")


@dataclass(frozen=True)
class ExerciseCell:
    """A code cell with solution regions: exercise ``number`` (1, 2, ... in notebook order)."""

    number: int
    title: str
    index: int
    where: str
    source: str


def exercise_cells(notebook, path: str | Path = "notebook") -> list[ExerciseCell]:
    """Every exercise of ``notebook``: each code cell that holds solution regions, in order.

    The title is the one the next check cell printed (``Exercise 2 (Dice loss): correct``),
    else the nearest ``Exercise N: title`` markdown heading above the cell, else the first
    title written on a marker (``# BEGIN SOLUTION: title``), else ``"write your code here"``.
    A marker's own title still wins for its region in student notebooks
    (:func:`replace_solutions`).

    Raises:
        NotebookError: unbalanced or nested solution markers (names the notebook and the cell).
    """
    found, markdown = [], ""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            markdown += "\n" + source_of(cell)
        where = describe_cell(path, index, cell)
        regions = solution_regions(source_of(cell), where) if cell.cell_type == "code" else []
        if not regions:
            continue
        titles = [_title_from_check(notebook.cells, index), *_MARKDOWN_EXERCISE.findall(markdown)[-1:],
                  *(region.title for region in regions)]
        title = re.sub(r"[*_`]+", "", next(filter(None, titles), "")).strip().rstrip(".:")[:80]
        found.append(ExerciseCell(len(found) + 1, title or "write your code here", index, where,
                                  source_of(cell)))
        markdown = ""
    return found


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


def solution_source(source: str, where: str = "this cell") -> str:
    """What ``ex.solution()`` shows for an exercise cell: its solution code, markers dropped.

    Each solution region comes with the innermost function (or method) around it, so the
    student sees the whole function filled in; a region outside any function comes alone.

    Example:
        >>> print(solution_source("import math\\n\\ndef f(x):\\n    # BEGIN SOLUTION\\n    return x\\n"
        ...                       "    # END SOLUTION\\n"))
        def f(x):
            return x
    """
    lines, regions = source.splitlines(), solution_regions(source, where)
    try:
        functions = [node for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:  # IPython magics: show the regions alone
        functions = []
    spans = []
    for region in regions:
        around = [(min(item.lineno for item in [node, *node.decorator_list]) - 1,
                   max(node.end_lineno - 1, region.end))  # the END marker may follow the last statement
                  for node in functions if node.lineno - 1 < region.begin < node.end_lineno]
        span = max(around, default=(region.begin, region.end))  # the innermost starts last
        if not any(start <= span[0] and span[1] <= end for start, end in spans):
            spans = [(start, end) for start, end in spans if not (span[0] <= start and end <= span[1])]
            spans.append(span)
    markers = {line for region in regions for line in (region.begin, region.end)}
    parts = ["\n".join(lines[number] for number in range(start, end + 1) if number not in markers)
             for start, end in sorted(spans)]
    return "\n\n".join(textwrap.dedent(part).strip("\n") for part in parts)


def for_each_notebook(paths, action: Callable[[Path], str | None]) -> int:
    """The main loop of ``make export``, ``student``, ``refresh-checks`` and ``run``.

    Calls ``action(path)`` for each notebook and prints the line it returns; a
    :class:`NotebookError` is printed as ``error: ...`` on stderr and the next notebook still
    processed.

    Returns:
        The exit status: 0 when every notebook went through, else 1.
    """
    failures = 0
    for path in paths:
        try:
            message = action(Path(path))
        except NotebookError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failures += 1
            continue
        if message:
            print(message, flush=True)
    return 1 if failures else 0


# ---------------------------------------------------------------- outputs

def clear_outputs(notebook, keep_check_outputs: bool = False):
    """Remove outputs and execution counts in place, optionally keeping the check cells' outputs.

    nbval refuses a stored output on a cell without an execution count ("Unrun reference cell
    has outputs"), so a kept check cell gets a stable count: 1, 2, 3, ... over the check cells
    that keep outputs. Every other cell ends with no outputs and no count.
    """
    number = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        cell.metadata.pop("execution", None)
        if keep_check_outputs and is_check_cell(cell) and cell.get("outputs"):
            number += 1
            cell.execution_count = number
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = number
        else:
            cell.outputs = []
    return notebook


def output_text(output) -> str:
    """The text of one output (stream text, text/plain, error name and value)."""
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    elif output.get("output_type") == "error":
        text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def lab_name(notebook_path: str | Path) -> str:
    """The lab a notebook belongs to: ``01_vnet_prostate.ipynb`` -> ``vnet``.

    Raises:
        NotebookError: the name is not ``NN_<lab>_<topic>.ipynb``.
    """
    match = re.match(r"^\d+_([a-z0-9]+)(_|\.|$)", Path(notebook_path).name)
    if not match:
        raise NotebookError(f"{notebook_path}: cannot tell the lab from the file name; "
                            "name notebooks NN_<lab>_<topic>.ipynb, e.g. 01_vnet_prostate.ipynb")
    return match.group(1)
