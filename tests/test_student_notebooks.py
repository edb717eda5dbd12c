"""``make student``: student notebooks differ from the instructor ones only in the solution regions."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from pathlib import Path

import pytest
from nbformat import v4
from notebook_tools import NotebookError, read_notebook, source_of, write_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STUB = re.compile(r'^\s*raise NotImplementedError\("Exercise (\d+): [^"]+"\)$')


def _load_script():
    spec = importlib.util.spec_from_file_location("make_student_notebooks",
                                                  ROOT / "data_scripts" / "make_student_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


def instructor_notebook():
    """Three exercises: indented regions, a top-level region, a titled marker; outputs present."""
    run = v4.new_output("stream", name="stdout", text="Exercise 1 (Dice loss): correct\n")
    cells = [
        v4.new_markdown_cell("# Toy lab\n## What you will learn\nThings."),
        v4.new_code_cell("PROFILE = None", metadata={"tags": ["parameters"]}),
        v4.new_markdown_cell("### Exercise 1: Dice loss\nWrite the soft Dice loss."),
        v4.new_code_cell(
            "import numpy as np\n\n"
            "def dice_loss(pred, label, eps=1e-6):\n"
            '    """Soft Dice loss."""\n'
            "    # BEGIN SOLUTION\n"
            "    intersection = (pred * label).sum()\n"
            "    return 1 - (2 * intersection + eps) / (pred.sum() + label.sum() + eps)\n"
            "    # END SOLUTION\n",
            execution_count=4, outputs=[]),
        v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('Exercise 1 (Dice loss): correct')",
                         execution_count=5, outputs=[run]),
        v4.new_code_cell("# BEGIN SOLUTION: pick the learning rate\nlr = 1e-3\n# END SOLUTION\n"
                         "print(lr)", execution_count=6,
                         outputs=[v4.new_output("stream", name="stdout", text="0.001\n")]),
        v4.new_code_cell(
            "class Block:\n"
            "    def forward(self, x):\n"
            "        # BEGIN SOLUTION: the residual block\n"
            "        y = x + 1\n"
            "        # END SOLUTION\n"
            "        return y\n\n"
            "    def backward(self, grad):\n"
            "        # BEGIN SOLUTION\n"
            "        return grad\n"
            "        # END SOLUTION\n"),
    ]
    return v4.new_notebook(cells=cells)


def solution_lines(lines: list[str]) -> set[int]:
    """Line numbers inside (and including) the markers, found by a plain scan."""
    marked, inside = set(), False
    for number, line in enumerate(lines):
        inside = inside or line.strip().startswith("# BEGIN SOLUTION")
        if inside:
            marked.add(number)
        if line.strip().startswith("# END SOLUTION"):
            inside = False
    return marked


def assert_only_solutions_differ(instructor, student):
    """Every difference is a solution region (instructor side) replaced by stub lines (student side)."""
    assert len(instructor.cells) == len(student.cells)
    for before, after in zip(instructor.cells, student.cells, strict=True):
        assert before.cell_type == after.cell_type
        assert before.metadata == after.metadata
        old, new = source_of(before).splitlines(), source_of(after).splitlines()
        if before.cell_type != "code":
            assert old == new
            continue
        assert after.outputs == [] and after.execution_count is None
        marked = solution_lines(old)
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
            if tag != "equal":
                assert set(range(i1, i2)) <= marked, old[i1:i2]
                assert all(STUB.match(line) for line in new[j1:j2]), new[j1:j2]
        assert not solution_lines(new)


def _parsable(source: str) -> str:
    return "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def test_solutions_become_numbered_stubs_with_titles(tmp_path):
    student, count = script.make_student_notebook(instructor_notebook(), "toy.ipynb")
    assert count == 3
    stubs = [line for cell in student.cells for line in source_of(cell).splitlines() if STUB.match(line)]
    assert stubs == [
        '    raise NotImplementedError("Exercise 1: Dice loss")',
        'raise NotImplementedError("Exercise 2: pick the learning rate")',
        '        raise NotImplementedError("Exercise 3: the residual block")',
        '        raise NotImplementedError("Exercise 3: the residual block")',
    ]


def test_title_printed_by_the_check_cell_wins_over_markdown():
    notebook = instructor_notebook()
    notebook.cells[4].outputs = [v4.new_output("stream", name="stdout",
                                               text="Exercise 1 (soft Dice (3D) loss): not yet - x\n")]
    student, _ = script.make_student_notebook(notebook, "toy.ipynb")
    assert 'raise NotImplementedError("Exercise 1: soft Dice (3D) loss")' in student.cells[3].source


def test_student_differs_only_in_solution_regions_and_outputs():
    instructor = instructor_notebook()
    student, _ = script.make_student_notebook(instructor, "toy.ipynb")
    assert_only_solutions_differ(instructor, student)
    for cell in student.cells:
        if cell.cell_type == "code":
            ast.parse(_parsable(source_of(cell)))


def test_instructor_notebook_is_left_unchanged():
    instructor = instructor_notebook()
    before = [source_of(cell) for cell in instructor.cells]
    script.make_student_notebook(instructor, "toy.ipynb")
    assert [source_of(cell) for cell in instructor.cells] == before
    assert instructor.cells[4].outputs


@pytest.mark.parametrize("broken, phrase", [
    ("# BEGIN SOLUTION\nx = 1\n", "is never closed"),
    ("x = 1\n# END SOLUTION\n", "has no matching '# BEGIN SOLUTION'"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "was closed"),
])
def test_unbalanced_markers_are_refused_naming_notebook_and_cell(broken, phrase):
    notebook = instructor_notebook()
    notebook.cells.append(v4.new_code_cell(broken))
    with pytest.raises(NotebookError, match=phrase) as caught:
        script.make_student_notebook(notebook, "notebooks/toy.ipynb")
    assert "notebooks/toy.ipynb, cell 8" in str(caught.value)


def test_command_line_writes_student_copies_and_figures(tmp_path, capsys):
    source_dir = tmp_path / "notebooks"
    write_notebook(instructor_notebook(), source_dir / "01_vnet_toy.ipynb")
    (source_dir / "figures").mkdir()
    (source_dir / "figures" / "vnet.svg").write_text("<svg/>")
    out = tmp_path / "build" / "student"
    assert script.main(["--out", str(out), str(source_dir / "01_vnet_toy.ipynb")]) == 0
    written = read_notebook(out / "01_vnet_toy.ipynb")
    assert_only_solutions_differ(read_notebook(source_dir / "01_vnet_toy.ipynb"), written)
    assert (out / "figures" / "vnet.svg").read_text() == "<svg/>"
    assert "3 exercise(s)" in capsys.readouterr().out


def test_command_line_fails_on_unbalanced_markers(tmp_path, capsys):
    notebook = instructor_notebook()
    notebook.cells.append(v4.new_code_cell("# END SOLUTION"))
    path = write_notebook(notebook, tmp_path / "01_vnet_toy.ipynb")
    assert script.main(["--out", str(tmp_path / "out"), str(path)]) == 1
    assert "01_vnet_toy.ipynb, cell 8" in capsys.readouterr().err
    assert not (tmp_path / "out" / "01_vnet_toy.ipynb").exists()


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_course_notebook_student_version(path):
    instructor = read_notebook(path)
    student, count = script.make_student_notebook(instructor, path)
    assert count >= 1, f"{path.name} has no solution regions"
    assert_only_solutions_differ(instructor, student)
    numbers = [int(STUB.match(line).group(1)) for cell in student.cells
               for line in source_of(cell).splitlines() if STUB.match(line)]
    assert sorted(set(numbers)) == list(range(1, count + 1))
    _assert_stub_numbers_match_checks(instructor, student)
    for cell in student.cells:
        if cell.cell_type == "code":
            ast.parse(_parsable(source_of(cell)))


def _assert_stub_numbers_match_checks(instructor, student):
    """The stub's "Exercise N" is the N the following check cell prints ("Exercise N (title): ...")."""
    code = [index for index, cell in enumerate(student.cells) if cell.cell_type == "code"]
    for position, index in enumerate(code[:-1]):
        stubs = [STUB.match(line) for line in source_of(student.cells[index]).splitlines() if STUB.match(line)]
        check = instructor.cells[code[position + 1]]
        printed = "".join(output.get("text", "") for output in check.get("outputs", []))
        if stubs and printed.startswith("Exercise "):
            assert printed.startswith(f"Exercise {stubs[0].group(1)} ("), (
                f"cell {index + 1}: the stub says Exercise {stubs[0].group(1)}, the check prints {printed!r}")
