"""``make export``: cells tagged ``export`` become ``labkit/labs/<lab>.py`` and never drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import export
import pytest
from nbformat import v4
from notebook_tools import EXPORT_TAG, NotebookError, read_notebook, tags_of, write_notebook

ROOT = Path(__file__).resolve().parents[1]
REAL_NOTEBOOKS = {"vnet": ROOT / "notebooks" / "01_vnet_prostate.ipynb",
                  "cfcm": ROOT / "notebooks" / "02_cfcm_lung.ipynb"}


def lab_notebook(folder: Path, name: str = "01_vnet_toy.ipynb") -> Path:
    cells = [
        v4.new_markdown_cell("# Toy"),
        v4.new_code_cell("PROFILE = None", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("import math\n\nSCALE = 2", metadata={"tags": [EXPORT_TAG]}),
        v4.new_code_cell("print('not exported')"),
        v4.new_code_cell("import math\nfrom math import (\n    sqrt,\n)\n\n\ndef scaled(x):\n"
                         "    # BEGIN SOLUTION\n    return SCALE * sqrt(x) * math.cos(0)\n"
                         "    # END SOLUTION\n", metadata={"tags": [EXPORT_TAG, "exercise"]}),
    ]
    return write_notebook(v4.new_notebook(cells=cells), folder / name)


def import_file(path: Path):
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def test_export_writes_tagged_cells_without_markers(tmp_path):
    notebook = lab_notebook(tmp_path / "notebooks")
    written = export.export(notebook, tmp_path / "labs")
    assert written == [tmp_path / "labs" / "vnet.py", tmp_path / "labs" / "vnet_solutions.py"]
    text = written[0].read_text()
    assert text.startswith("# generated from notebooks/01_vnet_toy.ipynb by `make export`; edit the notebook")
    assert "SOLUTION" not in text and "not exported" not in text and "PROFILE" not in text
    assert import_file(written[0])["scaled"](16) == 8.0
    assert text.count("import math") == 1  # each cell imports what it uses; the module once
    assert "\nfrom math import sqrt\n" in text


def test_solutions_are_written_with_the_function_around_them(tmp_path):
    notebook = lab_notebook(tmp_path / "notebooks")
    parsed = read_notebook(notebook)
    parsed.cells.insert(3, v4.new_markdown_cell("### Exercise 1: the scale"))
    parsed.cells.insert(4, v4.new_code_cell("# BEGIN SOLUTION\nSCALE = 2\n# END SOLUTION\nprint(SCALE)"))
    parsed.cells.insert(5, v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nex.scale.check(SCALE)", outputs=[
        v4.new_output("stream", name="stdout", text="Exercise 1 (scale): correct\n")]))
    write_notebook(parsed, notebook)
    export.export(notebook, tmp_path / "labs")
    solutions = import_file(tmp_path / "labs" / "vnet_solutions.py")["SOLUTIONS"]
    assert solutions == {
        1: ("scale", "SCALE = 2\n"),  # the title the check printed wins over the heading
        2: ("write your code here",
            "def scaled(x):\n    return SCALE * sqrt(x) * math.cos(0)\n"),  # the whole function
    }


def test_solution_texts_survive_quotes_and_backslashes(tmp_path):
    source = "def f():\n    # BEGIN SOLUTION\n    return '''a\\nb''' + '\\\\'\n    # END SOLUTION\n"
    notebook = write_notebook(v4.new_notebook(cells=[v4.new_code_cell(source)]), tmp_path / "01_vnet_x.ipynb")
    export.export(notebook, tmp_path / "labs")
    text = import_file(tmp_path / "labs" / "vnet_solutions.py")["SOLUTIONS"][1][1]
    namespace = {}
    exec(text, namespace)
    assert namespace["f"]() == "a\nb\\"


def test_check_passes_when_up_to_date_and_fails_on_drift(tmp_path, capsys):
    notebook = lab_notebook(tmp_path / "notebooks")
    labs = tmp_path / "labs"
    assert export.main([str(notebook), "--labs-dir", str(labs)]) == 0
    assert export.main(["--check", str(notebook), "--labs-dir", str(labs)]) == 0

    parsed = read_notebook(notebook)
    parsed.cells[2].source = "import math\n\nSCALE = 3"
    write_notebook(parsed, notebook)
    capsys.readouterr()
    assert export.main(["--check", str(notebook), "--labs-dir", str(labs)]) == 1
    error = capsys.readouterr().err
    assert "vnet.py is out of date" in error and "run `make export`" in error
    assert "+SCALE = 3" in error
    assert "SCALE = 2" in (labs / "vnet.py").read_text()  # --check writes nothing

    parsed.cells[2].source = "import math\n\nSCALE = 2"
    parsed.cells[4].source = parsed.cells[4].source.replace("math.cos(0)", "1")
    write_notebook(parsed, notebook)
    assert export.main(["--check", str(notebook), "--labs-dir", str(labs)]) == 1
    error = capsys.readouterr().err
    assert "vnet_solutions.py is out of date" in error and "+    return SCALE * sqrt(x) * 1" in error


def test_check_fails_when_module_is_missing(tmp_path):
    notebook = lab_notebook(tmp_path / "notebooks")
    assert "is out of date" in export.check(notebook, tmp_path / "labs")


def test_notebook_without_export_cells_writes_nothing(tmp_path, capsys):
    path = write_notebook(v4.new_notebook(cells=[v4.new_code_cell("x = 1")]), tmp_path / "02_cfcm_toy.ipynb")
    assert export.main([str(path), "--labs-dir", str(tmp_path / "labs")]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert not (tmp_path / "labs").exists()
    assert export.check(path, tmp_path / "labs") is None
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "cfcm.py").write_text("# stale\n")
    (tmp_path / "labs" / "cfcm_solutions.py").write_text("# stale\n")
    problem = export.check(path, tmp_path / "labs")
    assert "has no cells tagged export" in problem and "has no solution regions" in problem


@pytest.mark.parametrize("source, phrase", [
    ("%matplotlib inline\nx = 1", "IPython command '%matplotlib inline'"),
    ("def broken(:\n    pass", "is not valid Python"),
    ("# BEGIN SOLUTION\nx = 1", "is never closed"),
])
def test_bad_export_cells_are_refused_naming_the_cell(tmp_path, source, phrase):
    notebook = lab_notebook(tmp_path)
    parsed = read_notebook(notebook)
    parsed.cells.append(v4.new_code_cell(source, metadata={"tags": [EXPORT_TAG]}))
    write_notebook(parsed, notebook)
    with pytest.raises(NotebookError, match=phrase) as caught:
        export.generate(notebook)
    assert "01_vnet_toy.ipynb, cell 6" in str(caught.value)


def test_lab_name_comes_from_notebook_name(tmp_path):
    assert export.target_for(Path("notebooks/02_cfcm_lung.ipynb")) == ROOT / "labkit" / "labs" / "cfcm.py"
    with pytest.raises(NotebookError, match="NN_<lab>_<topic>.ipynb"):
        export.target_for(Path("lung.ipynb"))


def _has_export_cells(path: Path) -> bool:
    return path.is_file() and any(EXPORT_TAG in tags_of(cell) for cell in read_notebook(path).cells)


@pytest.mark.slow
@pytest.mark.parametrize("lab", sorted(REAL_NOTEBOOKS))
def test_course_modules_match_their_notebooks(lab):
    notebook = REAL_NOTEBOOKS[lab]
    if not _has_export_cells(notebook):
        pytest.skip(f"{notebook.name} has no cells tagged export yet")
    result = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "export.py"), "--check", str(notebook)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = f"labkit.labs.{lab}, labkit.labs.{lab}_solutions"
    imported = subprocess.run([sys.executable, "-c", f"import {modules}"], capture_output=True,
                              text=True, cwd=ROOT, timeout=300, env=_quiet_env())
    assert imported.returncode == 0, f"{modules} do not import:\n{imported.stderr[-2000:]}"


def _quiet_env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "LABKIT_HEADLESS": "1"}
