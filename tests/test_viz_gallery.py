"""plot_gallery: columns, paging and the error-map colours, checked on the rendered pixels."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from labkit.data.errors import DataError
from labkit.viz import plot_gallery
from labkit.viz.gallery import ERROR_COLOURS, error_map


def render(figure):
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)


def pixel(figure, pixels, ax, column, row):
    """The rendered colour at image pixel (column, row) of the picture in ``ax``."""
    x, y = ax.transData.transform((column, row))
    return pixels[int(figure.canvas.get_width_height()[1] - y), int(x)]


def tint(value):
    """The direction a colour leans away from grey (unit vector)."""
    centred = np.asarray(value, dtype=float) - np.mean(value)
    return centred / (np.linalg.norm(centred) + 1e-9)


def quadrants(size=16):
    """Truth = left half, prediction = top half: TP top-left, FP top-right, FN bottom-left."""
    label = np.zeros((size, size), dtype=np.float32)
    label[:, : size // 2] = 1
    pred = np.zeros((size, size), dtype=np.float32)
    pred[: size // 2, :] = 0.8
    return label, pred


def test_error_map_codes():
    label, pred = quadrants(4)
    assert error_map(label, pred).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]


def test_error_map_colours_land_on_the_right_pixels():
    label, pred = quadrants()
    image = np.full((1, 16, 16), 0.5, dtype=np.float32)
    figure = plot_gallery(image + np.linspace(0, 1e-3, 16), label[None], pred[None], ids=["xray"])
    pixels = render(figure)
    errors = figure.axes[3]
    assert errors.get_title() == "errors"
    expected = {(3, 3): "true positive", (12, 3): "false positive", (3, 12): "false negative"}
    for (column, row), name in expected.items():
        seen = pixel(figure, pixels, errors, column, row)
        assert tint(seen) @ tint(to_rgb(ERROR_COLOURS[name])) > 0.95, (name, seen)
    assert np.ptp(pixel(figure, pixels, errors, 12, 12)) < 4  # true negative stays grey


def test_truth_and_prediction_columns_show_their_masks():
    label, pred = quadrants()
    image = np.full((16, 16), 0.5, dtype=np.float32)
    figure = plot_gallery([image], [label], [pred])
    pixels = render(figure)
    image_axes, truth_axes, pred_axes, _ = figure.axes
    assert np.ptp(pixel(figure, pixels, image_axes, 3, 3)) < 4
    in_truth = pixel(figure, pixels, truth_axes, 3, 12)
    assert in_truth[1] > in_truth[0] + 40
    assert np.ptp(pixel(figure, pixels, truth_axes, 12, 12)) < 4
    in_pred = pixel(figure, pixels, pred_axes, 12, 3)
    assert in_pred[0] > in_pred[1] + 40
    assert np.ptp(pixel(figure, pixels, pred_axes, 12, 12)) < 4


def test_columns_follow_what_is_given():
    images = np.random.default_rng(0).random((3, 8, 8))
    assert [ax.get_title() for ax in plot_gallery(images).axes] == ["image", "", ""]
    titles = [ax.get_title() for ax in plot_gallery(images, labels=images > 0.5).axes[:2]]
    assert titles == ["image", "truth"]
    titles = [ax.get_title() for ax in plot_gallery(images, preds=images).axes[:2]]
    assert titles == ["image", "prediction"]


def test_pages_hold_per_page_rows_with_ids_and_dice():
    rng = np.random.default_rng(1)
    images = rng.random((6, 1, 12, 12))  # channel of size 1 first is fine
    labels = np.zeros((6, 12, 12))
    labels[:, 2:8, 2:8] = 1
    preds = labels.copy()
    preds[5] = 0
    ids = [f"MCUCXR_{number:04d}_0" for number in range(6)]
    last = plot_gallery(images, labels, preds, ids=ids, page=1, per_page=4)
    assert len(last.axes) == 2 * 4
    names = [ax.get_ylabel() for ax in last.axes[::4]]
    assert names == ["MCUCXR_0004_0\nDice 1.000", "MCUCXR_0005_0\nDice 0.000"]
    assert "page 2 / 2" in last._suptitle.get_text()
    with pytest.raises(DataError, match="page 2 does not exist: 6 images make 2 page"):
        plot_gallery(images, labels, preds, page=2, per_page=4)


@pytest.mark.parametrize("call, words", [
    (lambda: plot_gallery(np.zeros((2, 8, 8)), labels=np.zeros((3, 8, 8))), "3 labels for 2 images"),
    (lambda: plot_gallery(np.zeros((2, 8, 8)), preds=np.zeros((2, 4, 4))), "preds[0] has shape"),
    (lambda: plot_gallery(np.zeros((2, 3, 8, 8))), "not a 2D image"),
    (lambda: plot_gallery(np.zeros((2, 8, 8)), ids=["a"]), "1 ids for 2 images"),
])
def test_bad_input_says_what_to_do(call, words):
    with pytest.raises(DataError) as error:
        call()
    assert words in str(error.value) and "Fix:" in str(error.value)


def square(size, top, left, side):
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_contours_follow_the_truth_and_the_prediction():
    """The truth's outline (green) runs along its own edge, the prediction's (red) along its own."""
    from labkit.viz.gallery import CONTOUR_STYLES, plot_contours

    image = np.full((40, 40), 0.5, np.float32)
    truth, pred = square(40, 5, 5, 20), square(40, 15, 15, 20)
    figure = plot_contours([image], [truth], [pred], ["case: Dice 0.25"])
    ax = figure.axes[0]
    lines = {to_rgb(line.get_color()): line.get_xydata() for line in ax.get_lines()}
    green, red = lines[to_rgb(CONTOUR_STYLES["truth"][0])], lines[to_rgb(CONTOUR_STYLES["prediction"][0])]
    assert green[:, 0].min() == pytest.approx(4.5) and green[:, 0].max() == pytest.approx(24.5)
    assert red[:, 1].min() == pytest.approx(14.5) and red[:, 1].max() == pytest.approx(34.5)
    assert ax.get_title() == "case: Dice 0.25" and len(ax.get_lines()) == 2


def test_contours_draw_a_post_processed_prediction_and_fill_a_grid():
    from labkit.viz.gallery import plot_contours

    images = [np.zeros((30, 30)), np.zeros((20, 24)), np.zeros((30, 30)), np.zeros((30, 30))]
    masks = [np.pad(square(10, 2, 2, 5), ((0, image.shape[0] - 10), (0, image.shape[1] - 10))) for image in images]
    figure = plot_contours(images, masks, masks, post=masks, columns=3)
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(figure.axes) == 6 and len(visible) == 4  # 2 rows of 3, the last two empty
    assert all(len(ax.get_lines()) == 3 and ax.get_lines()[2].get_linestyle() == "--" for ax in visible)
    with pytest.raises(DataError, match=r"labels\[0\] has shape"):
        plot_contours(images[:1], [np.zeros((5, 5))], masks[:1])


def test_memory_views_show_each_step_and_the_stages():
    from labkit.viz.memory import plot_memory, plot_memory_overview

    rng = np.random.default_rng(0)
    trace = [{"stage": stage, "step": step, "steps": steps, "hidden": rng.uniform(size=(size, size, 3)),
              "forget": rng.uniform(size=(size, size, 3))}
             for stage, steps, size in ((2, 2, 4), (1, 3, 8)) for step in range(1, steps + 1)]
    image = np.zeros((32, 32))
    figure = plot_memory(trace, image, index=3, title="MCUCXR_0001_0")
    assert "stage 1 (8x8), step 2 of 3" in figure.axes[0].get_title()
    forget = figure.axes[2].get_images()[0].get_array()
    assert forget.shape == (32, 32) and forget[0, 0] == pytest.approx(trace[3]["forget"][0, 0].mean())
    overview = plot_memory_overview(trace, image)
    assert len([ax for ax in overview.axes if ax.get_images()]) == 2 * 4  # first and last step of 2 stages
    assert "step 3 of 3" in plot_memory(trace, image, index=4).axes[0].get_title()
    with pytest.raises(DataError, match="does not exist"):
        plot_memory(trace, image, index=5)
    with pytest.raises(DataError, match="memory_trace"):
        plot_memory([{"stage": 1}], image)
