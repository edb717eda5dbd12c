"""``make run``: notebooks executed headless with papermill, executed copy + HTML, clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import run_notebooks
from nbformat import v4
from notebook_rules import hygiene_problems
from notebook_tools import output_text, read_notebook, write_notebook

from labkit import paths

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning")


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch):
    """The commands set LABKIT_PROFILE / LABKIT_HEADLESS for their kernels; undo that after each test."""
    for name, value in (("LABKIT_PROFILE", "cpu"), ("LABKIT_HEADLESS", "0"), ("LABKIT_DATA", "data"),
                        ("LABKIT_RUNS", "runs")):
        monkeypatch.setenv(name, value)


def tiny_notebook(folder: Path, fail: bool = False) -> Path:
    cells = [
        v4.new_markdown_cell("# Tiny"),
        v4.new_code_cell("PROFILE = None", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("import os, pathlib\n"
                         "print('profile', PROFILE, 'headless', os.environ.get('LABKIT_HEADLESS'))\n"
                         "print('here', pathlib.Path('marker.txt').read_text())\n"
                         "print('data', os.environ['LABKIT_DATA'], 'runs', os.environ['LABKIT_RUNS'])"),
    ]
    if fail:
        cells.append(v4.new_code_cell("raise ValueError('the data folder is empty')"))
        cells.append(v4.new_code_cell("print('never reached')"))
    (folder / "marker.txt").write_text("next to the notebook")
    return write_notebook(v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), folder / "tiny.ipynb")


def _all_output(path: Path) -> str:
    return "".join(output_text(output) for cell in read_notebook(path).cells for output in cell.get("outputs", []))


def test_run_writes_executed_notebook_and_html(tmp_path, monkeypatch, capsys):
    notebook = tiny_notebook(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # the kernel must still run in the notebook's folder
    monkeypatch.delenv("LABKIT_DATA")  # unset: the course checkout's data/, wherever the kernel runs
    out = tmp_path / "build"
    assert run_notebooks.main(["--profile", "smoke", "--out", str(out), str(notebook)]) == 0
    text = _all_output(out / "tiny.ipynb")
    assert "profile smoke headless 1" in text
    assert "here next to the notebook" in text
    assert f"data {paths.data_root()} runs {tmp_path.parent / 'runs'}" in text  # relative: from the start folder
    assert "profile smoke headless 1" in (out / "tiny.html").read_text()
    injected = read_notebook(out / "tiny.ipynb").cells[2]
    assert "injected-parameters" in injected.metadata.tags and 'PROFILE = "smoke"' in injected.source
    printed = capsys.readouterr().out
    assert f"{notebook}: ok in " in printed and " s (smoke profile)" in printed
    assert not [name for name in out.iterdir() if name.name.startswith(".")]


def test_failing_notebook_exits_non_zero_naming_the_cell(tmp_path, capsys):
    notebook = tiny_notebook(tmp_path, fail=True)
    out = tmp_path / "build"
    assert run_notebooks.main(["--profile", "smoke", "--out", str(out), "--no-html", str(notebook)]) == 1
    error = capsys.readouterr().err
    assert f"{notebook}, cell 4 (\"raise ValueError('the data folder is empty')\") failed" in error
    assert "ValueError: the data folder is empty" in error
    assert "the data folder is empty" in _all_output(out / "tiny.ipynb")  # kept for debugging
    assert not (out / "tiny.html").exists()


def test_missing_notebook_is_reported(tmp_path, capsys):
    assert run_notebooks.main(["--out", str(tmp_path), str(tmp_path / "nope.ipynb")]) == 1
    assert "nope.ipynb: no such notebook" in capsys.readouterr().err


# ---------------------------------------------------------------- make refresh-checks

def _load_refresh_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "data_scripts" / "refresh_checks.py"
    spec = importlib.util.spec_from_file_location("refresh_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_notebook(folder: Path, answer: str = "4") -> Path:
    cells = [
        v4.new_code_cell("PROFILE = None", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("import os\nprint(os.environ['LABKIT_PROFILE'])", execution_count=7,
                         outputs=[v4.new_output("stream", name="stdout", text="stale\n")]),
        v4.new_code_cell(f"def double(x):\n    # BEGIN SOLUTION\n    return {answer}\n    # END SOLUTION"),
        v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n"
                         "verdict = 'correct' if double(2) == 4 else 'not yet - double(2) is wrong'\n"
                         "print(f'Exercise 1 (double): {verdict}')\nos.environ['LABKIT_PROFILE']"),
    ]
    return write_notebook(v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), folder / "checks.ipynb")


def test_refresh_checks_keeps_only_check_outputs(tmp_path, monkeypatch, capsys):
    refresh = _load_refresh_script()
    monkeypatch.setenv("LABKIT_PROFILE", "gpu")  # the script forces smoke
    path = check_notebook(tmp_path)
    assert refresh.main([str(path)]) == 0
    cells = read_notebook(path).cells
    assert [cell.outputs for cell in cells[:3]] == [[], [], []]
    assert [cell.execution_count for cell in cells] == [None, None, None, 1]  # nbval needs the 1
    outputs = cells[3].outputs
    assert [output_text(output) for output in outputs] == ["Exercise 1 (double): correct\n", "'smoke'"]
    assert outputs[1].execution_count == 1
    problems = hygiene_problems(path)  # the fixture has no header: look at the output rules only
    assert [problem for problem in problems if "output" in problem or "execution count" in problem] == []
    assert "1 check cell(s) refreshed" in capsys.readouterr().out


def test_refresh_checks_refuses_a_failing_check(tmp_path, capsys):
    refresh = _load_refresh_script()
    path = check_notebook(tmp_path, answer="5")
    before = path.read_text()
    assert refresh.main([str(path)]) == 1
    assert "checks.ipynb, cell 4 (\"# NBVAL_CHECK_OUTPUT\") does not pass" in capsys.readouterr().err
    assert path.read_text() == before


def test_refreshed_notebook_passes_nbval_with_the_sanitizer(tmp_path):
    """What refresh-checks stores is what nbval compares; the path printed differs per machine."""
    refresh = _load_refresh_script()
    notebook = check_notebook(tmp_path)
    parsed = read_notebook(notebook)
    parsed.cells.append(v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nimport pathlib, time\n"
                                         "print('saved to', pathlib.Path('metrics.json').resolve(), "
                                         "'in', time.perf_counter() % 7, 's')"))
    write_notebook(parsed, notebook)
    assert refresh.main([str(notebook)]) == 0
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / notebook.name).write_bytes(notebook.read_bytes())  # another folder, another time
    config = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                             "--nbval-sanitize-with", str(config), str(moved / notebook.name)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "LABKIT_PROFILE": "smoke"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout
