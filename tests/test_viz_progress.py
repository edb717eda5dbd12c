"""is_headless, progress and quiet: tqdm that draws only in a live front end, never in a check."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

import labkit.viz.progress_bar as progress_module
from labkit.exercises import CheckFailed, Exercise
from labkit.viz import is_headless, progress
from labkit.viz.progress_bar import quiet


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("yes", True),
                                             ("0", True), ("", True)])
def test_outside_a_kernel_always_headless(monkeypatch, value, expected):
    monkeypatch.setenv("LABKIT_HEADLESS", value)
    assert is_headless() is expected


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("on", True),
                                             ("0", False), ("false", False), ("no", False)])
def test_in_a_kernel_the_variable_decides(monkeypatch, value, expected):
    monkeypatch.setattr("labkit.viz.display.in_kernel", lambda: True)
    monkeypatch.setenv("LABKIT_HEADLESS", value)
    assert is_headless() is expected
    monkeypatch.delenv("LABKIT_HEADLESS")
    assert is_headless() is False


def test_headless_progress_iterates_silently(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    bar = progress(range(5), desc="train")
    assert len(bar) == 5 and list(bar) == [0, 1, 2, 3, 4]
    with progress(total=3) as manual:
        manual.update(2)
        manual.set_postfix(loss=0.5)
        assert len(manual) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def drawn_by(loop) -> str:
    """What a loop over progress bars writes (a text bar on stdout)."""
    import io
    from contextlib import redirect_stdout

    stream = io.StringIO()
    with redirect_stdout(stream):
        loop()
    return stream.getvalue()


def test_live_progress_draws_a_bar_and_quiet_silences_it(monkeypatch):
    monkeypatch.setattr(progress_module, "is_headless", lambda: False)

    def loop():
        for _ in progress([1, 2, 3], desc="epoch 1", leave=True):
            pass
    assert "epoch 1" in drawn_by(loop) and "3/3" in drawn_by(loop)
    with quiet():
        assert drawn_by(loop) == ""
        assert list(progress([1, 2])) == [1, 2]
    assert "epoch 1" in drawn_by(loop)  # quiet ends with its block


def test_live_bar_redraws_at_most_once_a_second(monkeypatch):
    monkeypatch.setattr(progress_module, "is_headless", lambda: False)
    assert progress(range(3)).mininterval >= 1.0


def check_sum(total):
    if total([1, 2, 3]) != 6:
        raise CheckFailed("1 + 2 + 3 is 6")


def test_check_prints_only_its_verdict(monkeypatch, capfd):
    """Bars and prints of the student's code are hidden while it is checked."""
    monkeypatch.setattr(progress_module, "is_headless", lambda: False)

    def train(batches):
        print("epoch 1 starts")
        return sum(progress(batches, desc="train"))

    exercise = Exercise(1, "sum", check_sum, [], lab="none")
    assert exercise.check(train) is True
    captured = capfd.readouterr()
    assert captured.out == "Exercise 1 (sum): correct\n" and captured.err == ""
    assert "train" in drawn_by(lambda: train([1]))  # the same code draws outside a check


CHECK_CELL = """\
import warnings
from labkit.exercises import CheckFailed, Exercise
from labkit.viz import progress

def train(batches):
    print("training")
    warnings.warn("a warning on stderr")
    return sum(progress(batches, desc="train"))

def check_sum(total):
    if total(range(4)) != 6:
        raise CheckFailed("0 + 1 + 2 + 3 is 6")

Exercise(1, "sum", check_sum, [], lab="none").check(train)
"""


@pytest.mark.slow
def test_check_in_a_live_kernel_leaves_one_line_and_the_result():
    """What nbval compares when a new user runs `pytest --nbval-lax` without LABKIT_HEADLESS."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CHECK_CELL),
                                               nbformat.v4.new_code_cell("for _ in progress(range(3)):\n"
                                                                         "    pass")])
    environment = {key: value for key, value in os.environ.items() if key != "LABKIT_HEADLESS"}
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute(env=environment)
    check, plain = notebook.cells
    assert [(output.output_type, output.get("text", output.get("data", {}).get("text/plain")))
            for output in check.outputs] == [("stream", "Exercise 1 (sum): correct\n"),
                                             ("execute_result", "True")]
    assert plain.outputs, "outside a check a live kernel shows the bar"


TRAINING_CELL = """\
from IPython.display import display
from labkit.viz import progress

handle = None
for epoch in range(60):  # Lab 1's cpu profile: 60 epochs, a train and a validation bar each
    for name in ("train", "validation"):
        for _ in progress(range(20), desc=name):
            pass
    if handle is None:
        handle = display(f"epoch {epoch}", display_id=True)
    else:
        handle.update(f"epoch {epoch}")
"""


@pytest.mark.slow
def test_a_long_training_cell_reaches_nbval_whole():
    """nbval reads a cell's messages only once the cell has finished. Widget bars (tqdm.auto) sent
    about 2,000 messages for this cell, the kernel dropped the last ones, and plain
    `pytest --nbval-lax` timed out waiting for the cell's end in Lab 1's cpu profile."""
    from queue import Empty

    from jupyter_client.manager import start_new_kernel

    environment = {key: value for key, value in os.environ.items() if key != "LABKIT_HEADLESS"}
    manager, client = start_new_kernel(kernel_name="python3", env=environment)
    try:
        message_id = client.execute(TRAINING_CELL, allow_stdin=False)
        assert client.get_shell_msg(timeout=120)["content"]["status"] == "ok"
        kinds = []
        while not kinds or kinds[-1] != "idle":
            try:
                message = client.get_iopub_msg(timeout=5)
            except Empty:
                break
            if message["parent_header"].get("msg_id") == message_id:
                kinds.append(message["content"].get("execution_state", message["msg_type"]))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert kinds and kinds[-1] == "idle", f"the cell's end was lost after {len(kinds)} messages"
    assert kinds.count("update_display_data") == 59
    assert len(kinds) < 8 * 120, f"{len(kinds)} messages for 120 bars"
