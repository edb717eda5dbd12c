"""The notebook rule book: everything wrong with a committed course notebook, in plain words.

``tests/test_notebook_hygiene.py`` runs it on every ``notebooks/*.ipynb``; the conventions are
in ``data_scripts/notebook_tools.py`` and docs/ARCHITECTURE.md (Notebooks).
"""

from __future__ import annotations

import re
from pathlib import Path

from notebook_tools import (
    FAILED_CHECK,
    PARAMETERS_TAG,
    SETUP_TAG,
    NotebookError,
    code_cells,
    describe_cell,
    is_check_cell,
    lab_name,
    output_text,
    read_notebook,
    solution_regions,
    source_of,
    tags_of,
)

MAX_NOTEBOOK_BYTES = 2_000_000
ABSOLUTE_PATH_HINTS = ("/home/", "/work/", "/root/", "/Users/", "C:\\")
SEEDING_CALLS = re.compile(r"\b(seed_everything|set_random_seed|manual_seed|default_rng|"
                           r"tf_utils\.configure|configure)\s*\(")
GLOBAL_NUMPY_RANDOM = re.compile(
    r"\b(?:np|numpy)\.random\.(?!default_rng\b|Generator\b|SeedSequence\b|PCG64\b|seed\b)(\w+)\s*\(")
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
