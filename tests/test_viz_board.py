"""TrainingBoard history, best epoch, ETA, headless lines and in-place redraw; plot_curves."""

import json
import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb

import labkit.viz.board as board_module
from labkit.data.errors import DataError
from labkit.viz import TrainingBoard, plot_curves
from labkit.viz.board import best_epoch, metrics_in
from labkit.viz.gallery import ERROR_COLOURS


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


@pytest.fixture
def front_end(monkeypatch):
    """A kernel with a front end; returns (the displays shown, the handle their updates go to)."""
    monkeypatch.delenv("LABKIT_HEADLESS", raising=False)
    monkeypatch.setattr(board_module, "is_headless", lambda: False)
    monkeypatch.setattr(board_module, "in_kernel", lambda: True)
    shown, handle = [], FakeHandle()

    def fake_display(picture, display_id=False):
        shown.append((picture, display_id))
        return handle

    monkeypatch.setattr("IPython.display.display", fake_display)
    return shown, handle


def test_front_end_redraws_one_display_in_place(front_end, clock):
    shown, handle = front_end
    board = TrainingBoard(max_epochs=4)
    for epoch in range(3):
        clock.now += 5.0  # an epoch
        board.update(epoch, train_loss=1.0 / (epoch + 1), validation_dice=0.2 * epoch)
    board.close()
    assert len(shown) == 1 and shown[0][1] is True  # one display, kept by id
    assert len(handle.updates) == 3  # two more epochs, then the final picture
    pictures = [shown[0][0]] + handle.updates
    assert all(picture.data.startswith(b"\x89PNG") for picture in pictures)
    assert len({picture.data for picture in pictures}) == 4


def test_front_end_skips_redraws_that_would_take_more_than_two_percent(front_end, clock, monkeypatch,
                                                                        tmp_path):
    """0.15 s per picture: 3-second epochs are drawn about every other epoch, 10-second ones always."""
    shown, handle = front_end
    drawing = board_module.png_output

    def slow_png(figure):
        clock.now += 0.15
        return drawing(figure)

    monkeypatch.setattr(board_module, "png_output", slow_png)
    log = tmp_path / "board.jsonl"
    monkeypatch.setenv("LABKIT_BOARD_LOG", str(log))
    for epoch_s, expected_draws in ((3.0, 10), (10.0, 21)):
        started = clock.now
        board = TrainingBoard(max_epochs=20)
        for epoch in range(20):
            clock.now += epoch_s
            board.update(epoch, train_loss=1.0 / (epoch + 1))
        board.close()  # always drawn: the last epoch's curves stay under the cell
        assert board.draws == expected_draws, epoch_s
        assert board.drawing_seconds == pytest.approx(0.15 * expected_draws)
        elapsed = clock.now - started
        assert board.drawing_seconds <= board_module.DRAWING_SHARE * elapsed + 0.15 * 2  # + the last, + close
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["updates"], r["draws"], r["headless"]) for r in records] == [(20, 10, False), (20, 21, False)]
    assert records[0]["drawing_s"] == pytest.approx(1.5) and records[0]["elapsed_s"] == pytest.approx(61.5)


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


# ---------------------------------------------------------------- the validation picture
def picture_volumes():
    """A label box in slices z 4..7, widest (5x6) at z = 6; a prediction shifted by two voxels in x."""
    image = np.random.default_rng(0).normal(size=(2, 16, 16, 8)).astype(np.float32)
    label = np.zeros((1, 16, 16, 8), np.float32)
    label[0, 4:8, 4:10, 4:8] = 1
    label[0, 4:9, 4:10, 6] = 1
    prob = np.roll(label, 2, axis=1) * 0.9
    return image, label, prob


def test_picture_keeps_the_widest_label_slice_every_epoch(headless):
    board = TrainingBoard(max_epochs=2)
    image, label, prob = picture_volumes()
    board.update(1, train_loss=0.5, picture=(image, label, prob))
    np.testing.assert_array_equal(board.picture[1], label[0, :, :, 6])
    np.testing.assert_array_equal(board.picture[0], image[0, :, :, 6])  # the first channel
    moved = np.zeros_like(label)
    moved[0, :, :, 0] = 1  # the next epoch's label is widest elsewhere: the slice stays
    board.update(2, train_loss=0.4, picture=(image, moved, prob))
    np.testing.assert_array_equal(board.picture[1], moved[0, :, :, 6])


def test_picture_is_drawn_beside_the_curves_with_the_errors_coloured(headless):
    board = TrainingBoard(max_epochs=2)
    image, label, prob = picture_volumes()
    board.update(1, train_loss=0.5, validation_dice=0.3, picture=(image, label, prob))
    figure = board.figure()
    assert len(figure.axes) == 3  # loss, dice and the picture
    overlay = np.asarray(figure.axes[2].get_images()[1].get_array())  # (y, x, RGBA)
    drawn = np.unique(overlay.reshape(-1, 4)[overlay.reshape(-1, 4)[:, 3] > 0, :3], axis=0)
    expected = np.array([to_rgb(colour) for colour in ERROR_COLOURS.values()])
    assert len(drawn) == 3 and np.allclose(np.sort(drawn, axis=0), np.sort(expected, axis=0))
    assert overlay[5, 4, 3] > 0 and overlay[5, 3, 3] == 0  # y = 5, x = 4: in the label


def test_two_dimensional_pictures_and_bad_pictures(headless):
    board = TrainingBoard()
    board.update(0, train_loss=1.0, picture=(np.zeros((8, 8)), np.ones((8, 8)), np.ones((8, 8))))
    assert board.picture[0].shape == (8, 8)
    with pytest.raises(DataError, match="an \\(image, label, prob\\) triple"):
        board.update(1, train_loss=1.0, picture=np.zeros((8, 8)))


def test_plot_variants_draws_the_mean_and_the_range_of_the_seeds():
    from labkit.viz import plot_variants

    runs_a = [{"epoch": [1, 2], "validation_dice": [0.2, 0.6]},
              {"epoch": [1, 2], "validation_dice": [0.4, 0.8]}]
    figure = plot_variants({"a": runs_a, "b": [{"epoch": [1, 2], "validation_dice": [0.1, 0.3]}]})
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines["a"].get_ydata()) == pytest.approx([0.3, 0.7])
    assert list(lines["b"].get_ydata()) == pytest.approx([0.1, 0.3])
    assert len(axes.collections) == 1  # a band for the variant with two seeds only
    assert axes.get_ylim() == (0, 1)
