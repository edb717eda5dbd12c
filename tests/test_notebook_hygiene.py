"""Committed notebooks are clean: no stray outputs, no absolute paths, seeded, conventional layout.

The checks live in ``tests/notebook_rules.py`` (``hygiene_problems``); here they run on every
``notebooks/*.ipynb`` and are themselves tested on small fixture notebooks, both ways.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat import v4
from nbval.plugin import get_sanitize_patterns
from notebook_rules import hygiene_problems, imported_modules
from notebook_tools import write_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

HEADER = """# Lab 9: Toy segmentation
A short course notebook used by the tests.

## What you will learn
- how a check cell works

## Time needed
| profile | time |
|---|---|
| smoke | 1 min |
| cpu | 10 min |
| gpu | 5 min |

## Data
Synthetic squares made by `make data`.
"""


def code(source: str, tags=(), outputs=None, execution_count=None):
    cell = v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {},
                            execution_count=execution_count)
    cell.outputs = outputs or []
    return cell


def stdout(text: str):
    return v4.new_output("stream", name="stdout", text=text)


def clean_notebook() -> nbformat.NotebookNode:
    """A small notebook that follows every convention."""
    cells = [
        v4.new_markdown_cell(HEADER),
        code('PROFILE = None\nRUN_NAME = "toy"', tags=["parameters"]),
        code("import numpy as np\nfrom labkit import get_profile\nprofile = get_profile(PROFILE)\n"
             "rng = np.random.default_rng(profile.seed)", tags=["setup"]),
        v4.new_markdown_cell("### Exercise 1: Double"),
        code('def double(x):\n    """Twice x."""\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION'),
        code('# NBVAL_CHECK_OUTPUT\nprint("Exercise 1 (double): correct")',
             outputs=[stdout("Exercise 1 (double): correct\n")], execution_count=1),
        code("values = rng.normal(size=3)\nprint(double(values))"),
    ]
    return v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})


def save(notebook, folder: Path, name: str = "01_vnet_toy.ipynb") -> Path:
    return write_notebook(notebook, folder / name)


# ---------------------------------------------------------------- the real notebooks

@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_course_notebook_is_clean(path):
    problems = hygiene_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_course_notebook_is_valid_nbformat(path):
    """Every stored cell has its id (nbformat 4.5): nbformat and nbval warn today, and will refuse."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]  # as stored (nbformat.read fills ids in)
    missing = [index for index, cell in enumerate(cells) if "id" not in cell]
    assert not missing, f"cells without an id: {missing}"


# ---------------------------------------------------------------- the checks themselves

def test_clean_fixture_has_no_problems(tmp_path):
    assert hygiene_problems(save(clean_notebook(), tmp_path)) == []


def _mutate(name):
    """Mutations of the clean notebook and a phrase the problem report must contain."""
    def stray_output(nb):
        nb.cells[6].outputs = [stdout("[0.1 0.2 0.3]\n")]

    def execution_count(nb):
        nb.cells[2].execution_count = 3

    def check_without_count(nb):
        nb.cells[5].execution_count = None

    def absolute_path(nb):
        nb.cells[6].source += '\nopen("/home/alice/data.csv")'

    def windows_path(nb):
        nb.cells[6].source += '\nopen(r"C:\\Users\\alice\\data.csv")'

    def global_random(nb):
        nb.cells[6].source = "values = np.random.rand(3)"

    def no_seeding(nb):
        nb.cells[2].source = "import numpy as np\nfrom labkit import get_profile"

    def no_title(nb):
        nb.cells[0].source = HEADER.replace("# Lab 9", "Lab 9")

    def no_time_needed(nb):
        nb.cells[0].source = HEADER.replace("## Time needed", "## Timing")

    def time_without_gpu(nb):
        nb.cells[0].source = HEADER.replace("| gpu | 5 min |\n", "")

    def no_data_section(nb):
        nb.cells[0].source = HEADER.replace("## Data", "## Sources")

    def code_first(nb):
        nb.cells.insert(0, code("x = 1"))

    def untagged_parameters(nb):
        nb.cells[1].metadata = {}

    def two_setup_cells(nb):
        nb.cells[6].metadata = {"tags": ["setup"]}

    def check_without_exercise(nb):
        nb.cells[4].source = "def double(x):\n    return 2 * x"

    def unbalanced(nb):
        nb.cells[4].source = nb.cells[4].source.replace("    # END SOLUTION", "")

    def failing_check_stored(nb):
        nb.cells[5].outputs = [stdout("Exercise 1 (double): not yet - f(2) is 3, expected 4\n")]

    def check_without_output(nb):
        nb.cells[5].outputs = []

    def stderr_in_check(nb):
        nb.cells[5].outputs.append(v4.new_output("stream", name="stderr", text="UserWarning: slow\n"))

    def wrong_framework(nb):
        nb.cells[2].source += "\nimport tensorflow as tf"

    def wrong_labkit_module(nb):
        nb.cells[2].source += "\nfrom labkit import tf_utils"

    mutations = {
        "stray_output": (stray_output, "has stored outputs but is not a check cell"),
        "execution_count": (execution_count, "has an execution count"),
        "check_without_count": (check_without_count, "Unrun reference cell has outputs"),
        "absolute_path": (absolute_path, "absolute path (/home/"),
        "windows_path": (windows_path, "absolute path (C:\\"),
        "global_random": (global_random, "np.random.rand() on the global generator"),
        "no_seeding": (no_seeding, "calls no seeding function"),
        "no_title": (no_title, "'# Title' line"),
        "no_time_needed": (no_time_needed, "no 'Time needed' section"),
        "time_without_gpu": (time_without_gpu, "does not mention the gpu profile"),
        "no_data_section": (no_data_section, "no 'Data' section"),
        "code_first": (code_first, "first cell must be the markdown header"),
        "untagged_parameters": (untagged_parameters, "not tagged 'parameters'"),
        "two_setup_cells": (two_setup_cells, "exactly one code cell tagged 'setup'"),
        "check_without_exercise": (check_without_exercise, "is a check cell but the code cell before it"),
        "unbalanced": (unbalanced, "is never closed"),
        "failing_check_stored": (failing_check_stored, "stores a failing check"),
        "check_without_output": (check_without_output, "without a stored output"),
        "stderr_in_check": (stderr_in_check, "stores stderr output"),
        "wrong_framework": (wrong_framework, "imports tensorflow"),
        "wrong_labkit_module": (wrong_labkit_module, "imports labkit.tf_utils"),
    }
    return mutations[name]


MUTATIONS = ["stray_output", "execution_count", "check_without_count", "absolute_path", "windows_path", "global_random",
             "no_seeding", "no_title", "no_time_needed", "time_without_gpu", "no_data_section",
             "code_first", "untagged_parameters", "two_setup_cells", "check_without_exercise",
             "unbalanced", "failing_check_stored", "check_without_output", "stderr_in_check",
             "wrong_framework", "wrong_labkit_module"]


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_broken_convention_is_reported(tmp_path, mutation):
    change, expected = _mutate(mutation)
    notebook = clean_notebook()
    change(notebook)
    problems = hygiene_problems(save(notebook, tmp_path))
    assert any(expected in problem for problem in problems), problems
    assert all("01_vnet_toy.ipynb" in problem for problem in problems)


def test_problems_name_the_cell(tmp_path):
    notebook = clean_notebook()
    notebook.cells[6].outputs = [stdout("x\n")]
    (problem,) = hygiene_problems(save(notebook, tmp_path))
    assert 'cell 7 ("values = rng.normal(size=3)")' in problem


def test_lung_lab_may_import_tensorflow_but_not_torch(tmp_path):
    notebook = clean_notebook()
    notebook.cells[2].source += "\nimport tensorflow as tf"
    assert hygiene_problems(save(notebook, tmp_path, "02_cfcm_toy.ipynb")) == []
    notebook.cells[2].source += "\nimport torch.nn as nn"
    problems = hygiene_problems(save(notebook, tmp_path, "02_cfcm_toy.ipynb"))
    assert [problem for problem in problems if "imports torch.nn" in problem]


def test_oversized_notebook_is_reported(tmp_path):
    notebook = clean_notebook()
    notebook.cells[0].source += "\n<!-- " + "x" * 2_100_000 + " -->"
    problems = hygiene_problems(save(notebook, tmp_path))
    assert any("limit 2 MB" in problem for problem in problems)


def test_imported_modules_reads_both_import_forms():
    source = "import numpy as np, torch\nfrom labkit.viz import show_volume as show\n# import keras"
    assert imported_modules(source) == {"numpy", "torch", "labkit.viz", "labkit.viz.show_volume"}


# ---------------------------------------------------------------- the nbval sanitiser

SANITIZE_CONFIG = Path(__file__).resolve().parent / "nbval_sanitize.cfg"


def sanitize(text: str) -> str:
    for regex, replacement in get_sanitize_patterns(SANITIZE_CONFIG.read_text()):
        text = re.sub(regex, replacement, text)
    return text


@pytest.mark.parametrize("first, second", [
    ("saved to /work/main/runs/vnet-smoke/metrics.json", "saved to /home/ann/course/runs/vnet-smoke/metrics.json"),
    (r"saved to C:\Users\ann\runs\metrics.json", "saved to /tmp/runs/metrics.json"),
    ("<Model at 0x7f3a2c1b9d00>", "<Model at 0x55d0c0ffee>"),
    ("training on cuda:0", "training on cpu"),
    ("/job:localhost/replica:0/task:0/device:GPU:0", "/device:CPU:0"),
    ("GPU: NVIDIA H100 80GB HBM3", "GPU: Tesla T4"),
    ("one epoch took 12.3 s (2 min in all)", "one epoch took 0.8 s (14 min in all)"),
    ("3.5 it/s", "120.2 it/s"),
    ("started 2026-11-24 05:16:26.123", "started 2027-01-02 23:59:59.999"),
    ("ETA 01:23", "ETA 1:02:03"),
])
def test_sanitizer_hides_what_changes_between_machines(first, second):
    assert sanitize(first) == sanitize(second)


@pytest.mark.parametrize("first, second", [
    ("Exercise 3 (Dice loss): correct", "Exercise 3 (Dice loss): not yet - your output has 2 channels"),
    ("your output has 2 channels, expected 1", "your output has 3 channels, expected 1"),
    ("shape (2, 32, 32, 16)", "shape (2, 32, 32, 8)"),
    ("dice 0.912", "dice 0.913"),
])
def test_sanitizer_keeps_what_checks_compare(first, second):
    assert sanitize(first) != sanitize(second)
