"""TrainingBoard history, best epoch, ETA, headless lines and in-place redraw; plot_curves."""

import math

import numpy as np
import pytest

import labkit.viz.board as board_module
from labkit.data.errors import DataError
from labkit.viz import TrainingBoard, plot_curves
from labkit.viz.board import best_epoch, metrics_in


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")


class Clock:
    """A stand-in for time.perf_counter that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(board_module.time, "perf_counter", fake)
    return fake


def test_history_keeps_one_value_per_epoch(headless):
    board = TrainingBoard()
    board.update(0, train_loss=0.9, train_dice=np.float32(0.1))
    board.update(1, train_loss=np.array(0.7), validation_loss=0.8, validation_dice=0.3)
    board.update(2, train_loss=0.5, train_dice=0.4)
    assert board.history["epoch"] == [0, 1, 2]
    assert board.history["train_loss"] == pytest.approx([0.9, 0.7, 0.5])
    assert math.isnan(board.history["validation_loss"][0]) and math.isnan(board.history["validation_loss"][2])
    assert board.history["validation_dice"][1] == pytest.approx(0.3)
    assert math.isnan(board.history["train_dice"][1])
    assert {len(values) for values in board.history.values()} == {3}


def test_best_epoch_prefers_validation_dice_then_loss():
    history = {"epoch": [1, 2, 3], "validation_loss": [0.5, 0.3, 0.4],
               "validation_dice": [0.6, 0.7, 0.8]}
    assert best_epoch(history) == (3, "validation_dice", pytest.approx(0.8))
    del history["validation_dice"]
    assert best_epoch(history) == (2, "validation_loss", pytest.approx(0.3))
    assert best_epoch({"epoch": [1], "train_loss": [0.2]}) is None
    assert best_epoch({"epoch": [1, 2], "validation_dice": [math.nan, 0.4]})[0] == 2


def test_headless_prints_one_line_per_epoch_with_best_and_eta(headless, clock, capsys):
    board = TrainingBoard(max_epochs=6)
    values = [(0.9, 0.95, 0.20), (0.7, 0.80, 0.55), (0.6, 0.85, 0.50)]
    for epoch, (train_loss, validation_loss, validation_dice) in enumerate(values):
        clock.now += 5.0
        board.update(epoch, train_loss=train_loss, validation_loss=validation_loss,
                     validation_dice=validation_dice)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 0/6 | train_loss 0.9000 | validation_loss 0.9500")
    assert "validation_dice 0.5500" in lines[1] and "best epoch 1" in lines[1]
    assert "best epoch 1" in lines[2]  # epoch 2 has a lower Dice
    assert lines[2].endswith("5.0 s/epoch, ETA 0:00:15")  # 3 epochs left at 5 s each
    board.close()
    assert capsys.readouterr().out == ""  # no kernel here: nothing more to print


def test_eta_without_max_epochs_gives_the_rate_only(headless, clock):
    board = TrainingBoard()
    clock.now += 2.0
    board.update(0, train_loss=1.0)
    assert board.eta_text() == "2.0 s/epoch"


def test_not_a_number_is_refused(headless):
    board = TrainingBoard()
    with pytest.raises(DataError, match="train_loss=.* is not a single number"):
        board.update(0, train_loss=[0.1, 0.2])


class FakeHandle:
    def __init__(self):
        self.updates = []

    def update(self, picture):
        self.updates.append(picture)


def test_front_end_redraws_one_display_in_place(monkeypatch):
    monkeypatch.delenv("LABKIT_HEADLESS", raising=False)
    monkeypatch.setattr(board_module, "is_headless", lambda: False)
    monkeypatch.setattr(board_module, "in_kernel", lambda: True)
    shown, handle = [], FakeHandle()

    def fake_display(picture, display_id=False):
        shown.append((picture, display_id))
        return handle

    monkeypatch.setattr("IPython.display.display", fake_display)
    board = TrainingBoard(max_epochs=4)
    for epoch in range(3):
        board.update(epoch, train_loss=1.0 / (epoch + 1), validation_dice=0.2 * epoch)
    board.close()
    assert len(shown) == 1 and shown[0][1] is True  # one display, kept by id
    assert len(handle.updates) == 3  # two more epochs, then the final picture
    pictures = [shown[0][0]] + handle.updates
    assert all(picture.data.startswith(b"\x89PNG") for picture in pictures)
    assert len({picture.data for picture in pictures}) == 4


def test_headless_close_in_a_kernel_shows_one_static_figure(monkeypatch, headless):
    shown = []
    monkeypatch.setattr("labkit.viz.display.in_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda picture, **_: shown.append(picture))
    with TrainingBoard() as board:
        board.update(0, train_loss=0.5)
        board.update(1, train_loss=0.4)
    assert len(shown) == 1 and shown[0].data.startswith(b"\x89PNG")


def test_plot_curves_draws_each_series_and_marks_the_best_epoch():
    history = {"epoch": [0, 1, 2, 3], "train_loss": [0.9, 0.6, 0.5, 0.4],
               "validation_loss": [1.0, 0.7, math.nan, 0.75],
               "train_dice": [0.1, 0.5, 0.6, 0.7], "validation_dice": [0.1, 0.6, math.nan, 0.5]}
    figure = plot_curves(history, title="V-Net")
    loss_axes, dice_axes = figure.axes
    lines = {line.get_label(): line for line in dice_axes.get_lines()}
    assert list(lines["validation dice"].get_xdata()) == [0, 1, 3]  # NaN skipped
    assert list(lines["train dice"].get_ydata()) == pytest.approx([0.1, 0.5, 0.6, 0.7])
    assert list(lines["best (epoch 1)"].get_ydata()) == pytest.approx([0.6])
    assert any(list(line.get_xdata()) == [1, 1] for line in loss_axes.get_lines())  # the marker line
    assert "best epoch 1 (validation dice 0.6000)" in figure._suptitle.get_text()
    assert loss_axes.get_ylabel() == "loss" and dice_axes.get_ylabel() == "dice"


def test_metrics_are_found_from_the_keys():
    history = {"epoch": [0], "train_loss": [1.0], "validation_loss": [1.0], "validation_dice": [0.1],
               "lr": [0.01]}
    assert metrics_in(history) == ["loss", "dice", "lr"]


def test_plot_curves_rejects_ragged_history():
    with pytest.raises(DataError, match="different lengths"):
        plot_curves({"epoch": [0, 1], "train_loss": [0.5]})
