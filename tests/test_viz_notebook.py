"""In a real kernel: headless runs leave static pictures, live runs redraw one output in place."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

SETUP = """\
import numpy as np
from labkit.viz import SliceViewer, TrainingBoard, show_gallery
image = np.random.default_rng(0).random((2, 12, 10, 8)).astype(np.float32)
label = (image[0] > 0.7).astype(np.int16)
"""
BOARD = """\
board = TrainingBoard(max_epochs=3)
for epoch in range(3):
    board.update(epoch, train_loss=1.0 / (epoch + 1), validation_dice=0.3 * epoch)
board.close()
"""


def run(cells, headless):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    environment = {key: value for key, value in os.environ.items() if key != "LABKIT_HEADLESS"}
    if headless:
        environment["LABKIT_HEADLESS"] = "1"
    client = NotebookClient(notebook, timeout=120, kernel_name="python3")
    client.execute(env=environment)
    return notebook


def kinds(cell):
    return [sorted(output.get("data", {})) or [output["output_type"]] for output in cell.outputs]


def test_headless_notebook_keeps_static_pictures():
    notebook = run([SETUP, "SliceViewer(image, label, spacing=(1, 1, 2))", BOARD,
                    "show_gallery(image[0].transpose(2, 0, 1), per_page=4)"], headless=True)
    viewer, board, gallery = notebook.cells[1:]
    assert ["image/png", "text/plain"] in kinds(viewer)
    assert not any("application/vnd.jupyter.widget-view+json" in kind for kind in kinds(viewer))
    lines = [output["text"] for output in board.outputs if output["output_type"] == "stream"]
    lines = "".join(lines).splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["epoch 0/3", "epoch 1/3", "epoch 2/3"]
    assert sum("image/png" in kind for kind in kinds(board)) == 1  # one final figure
    assert ["image/png", "text/plain"] in kinds(gallery)


def test_live_notebook_shows_widgets_and_one_board_picture():
    notebook = run([SETUP, "SliceViewer(image, label)", BOARD], headless=False)
    viewer, board = notebook.cells[1:]
    assert any("application/vnd.jupyter.widget-view+json" in kind for kind in kinds(viewer))
    assert kinds(board) == [["image/png", "text/plain"]]  # updated in place, no text lines
