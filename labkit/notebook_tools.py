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
- cells tagged ``export`` are written to ``labkit/labs/<lab>.py``.

Example:
    >>> regions = solution_regions("x = 1\\n# BEGIN SOLUTION\\ny = 2\\n# END SOLUTION\\n")
    >>> [(region.begin, region.end) for region in regions]
    [(1, 3)]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from labkit.io import atomic_write_text

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
PARAMETERS_TAG = "parameters"
SETUP_TAG = "setup"
EXPORT_TAG = "export"
NB_VERSION = 4

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b[ \t]*[:\-]?[ \t]*(?P<title>.*?)\s*$")
_END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
_COMMENT = re.compile(r"^[ \t]*#+[ \t]*(?P<text>\S.*?)\s*$")
_EXERCISE_PREFIX = re.compile(r"^exercise\s*\d*\s*[:.\-\u2013\u2014)]*\s*", re.IGNORECASE)
_MARKDOWN_EXERCISE = re.compile(r"^#+\s*exercise\s*\d*\s*[:.\-\u2013\u2014)]+\s*(?P<title>.+?)\s*$",
                                re.IGNORECASE | re.MULTILINE)
_DIRECTIVE = re.compile(r"^(NBVAL_\w+|noqa\b|type:|pragma\b)", re.IGNORECASE)


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


def exercise_title(source: str, markdown_before: str = "") -> str:
    """A short title for the exercise in ``source``.

    Taken from, in order: the nearest ``Exercise N: title`` heading in the markdown above; the
    cell's leading comment line (an ``Exercise N:`` prefix removed); the first title written on
    a marker (``# BEGIN SOLUTION: title``); the first comment inside the first solution region;
    else ``"write your code here"``. A marker's own title still wins for its region
    (:func:`replace_solutions`).
    """
    headings = _MARKDOWN_EXERCISE.findall(markdown_before)
    if headings:
        return _clean_title(headings[-1])
    lines = source.splitlines()
    for line in lines:
        comment = _COMMENT.match(line)
        if comment and not _BEGIN.match(line) and not _DIRECTIVE.match(comment["text"]):
            return _clean_title(_EXERCISE_PREFIX.sub("", comment["text"]))
        if line.strip() and not comment:
            break
    regions = solution_regions(source)
    marker_title = next((region.title for region in regions if region.title), "")
    if marker_title:
        return _clean_title(marker_title)
    for line in lines[regions[0].begin + 1:regions[0].end] if regions else []:
        comment = _COMMENT.match(line)
        if comment:
            return _clean_title(comment["text"])
    return "write your code here"


def _clean_title(text: str) -> str:
    text = re.sub(r"[*_`]+", "", text).strip().rstrip(".:")
    return text[:80] or "write your code here"


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


# ---------------------------------------------------------------- hygiene (tests/test_notebook_hygiene.py)

MAX_NOTEBOOK_BYTES = 2_000_000
ABSOLUTE_PATH_HINTS = ("/home/", "/work/", "/root/", "/Users/", "C:\\")
SEEDING_CALLS = re.compile(r"\b(seed_everything|set_random_seed|manual_seed|default_rng|"
                           r"tf_utils\.configure|configure)\s*\(")
GLOBAL_NUMPY_RANDOM = re.compile(
    r"\b(?:np|numpy)\.random\.(?!default_rng\b|Generator\b|SeedSequence\b|PCG64\b|seed\b)(\w+)\s*\(")
FAILED_CHECK = re.compile(r": (not yet -|not implemented yet|your code raised )")
HEADER_SECTIONS = ("what you will learn", "time needed", "data")
FORBIDDEN_IMPORTS = {  # lab -> modules its kernel must never import
    "vnet": ("tensorflow", "keras", "labkit.tf_utils", "labkit.exercises.cfcm", "labkit.labs.cfcm"),
    "cfcm": ("torch", "torchvision", "labkit.torch_utils", "labkit.exercises.vnet", "labkit.labs.vnet"),
}
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w., ()]+)|import\s+([\w., ]+))", re.MULTILINE)


def hygiene_problems(path: str | Path) -> list[str]:
    """Everything wrong with a committed notebook, one plain sentence each (empty: clean).

    Checks size, stray outputs and execution counts, absolute paths, seeding, the header cell,
    the ``parameters`` and ``setup`` cells, exercise/check pairs and framework imports.
    """
    path = Path(path)
    problems = []
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_NOTEBOOK_BYTES:
        problems.append(f"{path} is {size / 1e6:.1f} MB (limit 2 MB): clear outputs and link big images")
    notebook = read_notebook(path)
    for check in (_outputs_problems, _absolute_path_problems, _randomness_problems, _header_problems,
                  _structure_problems, _exercise_problems, _import_problems):
        problems.extend(check(path, notebook))
    return problems


def _outputs_problems(path, notebook) -> list[str]:
    problems = []
    for index, cell in code_cells(notebook):
        where = describe_cell(path, index, cell)
        if not is_check_cell(cell):
            if cell.get("execution_count") is not None:
                problems.append(f"{where} has an execution count: clear the outputs before committing "
                                "(Edit > Clear Outputs of All Cells) or run `make refresh-checks`")
            if cell.get("outputs"):
                problems.append(f"{where} has stored outputs but is not a check cell: clear its outputs")
            continue
        if cell.get("outputs") and cell.get("execution_count") is None:
            problems.append(f"{where} stores outputs without an execution count, which nbval rejects "
                            "('Unrun reference cell has outputs'): run `make refresh-checks`")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                problems.append(f"{where} stores stderr output (a warning?) that nbval will compare: "
                                "silence it in the check, then run `make refresh-checks`")
            if output.get("output_type") == "error" or FAILED_CHECK.search(output_text(output)):
                problems.append(f"{where} stores a failing check ({output_text(output).strip()[:80]!r}): "
                                "fix the solution above, then run `make refresh-checks`")
        if not cell.get("outputs"):
            problems.append(f"{where} is a check cell without a stored output: run `make refresh-checks`")
    return problems


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _absolute_path_problems(path, notebook) -> list[str]:
    problems = []
    for index, cell in enumerate(notebook.cells):
        for text in _strings({"source": cell.get("source"), "outputs": cell.get("outputs", [])}):
            hint = next((hint for hint in ABSOLUTE_PATH_HINTS if hint in text), None)
            if hint:
                problems.append(f"{describe_cell(path, index, cell)} contains an absolute path ({hint}...): "
                                "use paths relative to the notebook or labkit.paths")
                break
    if any(hint in text for text in _strings(dict(notebook.metadata)) for hint in ABSOLUTE_PATH_HINTS):
        problems.append(f"{path}: the notebook metadata contains an absolute path: remove it")
    return problems


def _randomness_problems(path, notebook) -> list[str]:
    problems = []
    for index, cell in code_cells(notebook):
        for match in GLOBAL_NUMPY_RANDOM.finditer(_code_only(source_of(cell))):
            problems.append(f"{describe_cell(path, index, cell)} calls np.random.{match.group(1)}() on the "
                            "global generator: use rng = np.random.default_rng(seed) and rng."
                            f"{match.group(1)}()")
    setup = [cell for _, cell in code_cells(notebook) if SETUP_TAG in tags_of(cell)]
    if setup and not SEEDING_CALLS.search(_code_only(source_of(setup[0]))):
        problems.append(f"{path}: the setup cell calls no seeding function (seed_everything(...), "
                        "tf_utils.configure(seed=...), keras.utils.set_random_seed(...))")
    return problems


def _code_only(source: str) -> str:
    """The source with ``#`` comments cut off each line (good enough for pattern checks)."""
    return "\n".join(line.split("#", 1)[0] for line in source.splitlines())


def _header_problems(path, notebook) -> list[str]:
    if not notebook.cells or notebook.cells[0].cell_type != "markdown":
        return [f"{path}: the first cell must be the markdown header (title, What you will learn, "
                "Time needed, Data)"]
    text = source_of(notebook.cells[0])
    problems = []
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if not first_line.startswith("# "):
        problems.append(f"{path}: the header cell must start with a '# Title' line")
    sections = _sections(text)
    for name in HEADER_SECTIONS:
        if name not in sections:
            problems.append(f"{path}: the header cell has no '{name.capitalize()}' section "
                            "(a '## ...' heading or a '**...**' label)")
    missing = [word for word in ("smoke", "cpu", "gpu")
               if not re.search(rf"\b{word}\b", sections.get("time needed", ""), re.IGNORECASE)]
    if "time needed" in sections and missing:
        problems.append(f"{path}: the 'Time needed' section does not mention the {', '.join(missing)} "
                        "profile(s)")
    return problems


def _sections(markdown: str) -> dict[str, str]:
    """Header-cell sections by lower-case name: ``## Name`` headings or ``**Name**`` labels."""
    sections, name = {}, None
    for line in markdown.splitlines():
        heading = re.match(r"^\s*(?:#{2,6}\s*(?P<h>[^#].*?)|\*\*(?P<b>[^*]+?)\*\*:?(?P<rest>.*))\s*$", line)
        label = heading and (heading["h"] or heading["b"])
        if label:
            name = label.strip().rstrip(":").lower().replace("you'll", "you will").replace("\u2019ll", " will")
            name = next((known for known in HEADER_SECTIONS if name.startswith(known)), name)
            sections[name] = heading["rest"] or ""
        elif name is not None:
            sections[name] += "\n" + line
    return sections


def _structure_problems(path, notebook) -> list[str]:
    cells = code_cells(notebook)
    if not cells:
        return [f"{path}: the notebook has no code cells"]
    problems = []
    if PARAMETERS_TAG not in tags_of(cells[0][1]):
        problems.append(f"{describe_cell(path, *cells[0])} is the first code cell but is not tagged "
                        "'parameters' (papermill needs it: PROFILE = None, RUN_NAME = ...)")
    setup = [(index, cell) for index, cell in cells if SETUP_TAG in tags_of(cell)]
    if len(setup) != 1:
        problems.append(f"{path}: expected exactly one code cell tagged 'setup' (imports, profile, seeds), "
                        f"found {len(setup)}")
    elif len(cells) > 1 and setup[0][0] != cells[1][0]:
        problems.append(f"{describe_cell(path, *setup[0])} is tagged 'setup' but is not the code cell "
                        "right after the parameters cell")
    return problems


def _exercise_problems(path, notebook) -> list[str]:
    problems, previous = [], None
    for index, cell in code_cells(notebook):
        where = describe_cell(path, index, cell)
        try:
            regions = solution_regions(source_of(cell), where)
        except NotebookError as error:
            problems.append(str(error))
            regions = None
        if is_check_cell(cell) and not (previous and previous[1]):
            problems.append(f"{where} is a check cell but the code cell before it has no "
                            "'# BEGIN SOLUTION' ... '# END SOLUTION' region")
        previous = (index, regions)
    return problems


def imported_modules(source: str) -> set[str]:
    """Modules a cell imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    modules = set()
    for match in _IMPORT.finditer(_code_only(source)):
        package, names = (match.group(1), match.group(2)) if match.group(1) else ("", match.group(3))
        if package:
            modules.add(package)
        for part in names.replace("(", " ").replace(")", " ").split(","):
            if part.split():
                name = part.split()[0]  # "a as b" imports a
                modules.add(f"{package}.{name}" if package else name)
    return modules


def _import_problems(path, notebook) -> list[str]:
    try:
        forbidden = FORBIDDEN_IMPORTS.get(lab_name(path), ())
    except NotebookError:
        return []
    problems = []
    for index, cell in code_cells(notebook):
        for module in sorted(imported_modules(source_of(cell))):
            bad = next((name for name in forbidden if module == name or module.startswith(name + ".")),
                       None)
            if bad:
                problems.append(f"{describe_cell(path, index, cell)} imports {module}: this lab's kernel "
                                f"must not load {bad}")
    return problems
