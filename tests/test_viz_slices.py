"""plot_slices draws the right slices, overlays and aspect: checked on the rendered pixels."""

import nibabel
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from labkit.data.errors import DataError
from labkit.viz import plot_slices
from labkit.viz.display import new_figure
from labkit.viz.slices import CROSSHAIR_COLOUR, LABEL_COLOURS, PLANES, PRED_COLOURS

SHAPE = (20, 16, 12)  # x, y, z


def render(figure):
    """The figure's pixels as an (H, W, 3) int array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)


def pixel(figure, pixels, ax, x_mm, y_mm):
    """The rendered colour at data point (x_mm, y_mm) of ``ax``."""
    column, row = ax.transData.transform((x_mm, y_mm))
    return pixels[int(figure.canvas.get_width_height()[1] - row), int(column)]


def panel_pixels(figure, pixels, ax):
    """All rendered pixels strictly inside the axes box."""
    box = ax.get_window_extent()
    height = figure.canvas.get_width_height()[1]
    top, bottom = int(height - box.y1) + 2, int(height - box.y0) - 2
    return pixels[top:bottom, int(box.x0) + 2:int(box.x1) - 2].reshape(-1, 3)


def colour_share(values, colour, saturation=30):
    """Fraction of pixels tinted towards ``colour``: away from grey, in that colour's direction."""
    target = np.array(to_rgb(colour)) * 255
    target = target - target.mean()
    tint = values - values.mean(axis=1, keepdims=True)
    length = np.linalg.norm(tint, axis=1) * np.linalg.norm(target) + 1e-9
    similar = (tint @ target) / length > 0.9
    return float(np.mean(similar & (np.ptp(values, axis=1) > saturation)))


def near(figure, pixels, ax, x_mm, y_mm, radius=3):
    """The rendered pixels in a small square around data point (x_mm, y_mm)."""
    column, row = ax.transData.transform((x_mm, y_mm))
    row = int(figure.canvas.get_width_height()[1] - row)
    return pixels[row - radius:row + radius + 1, int(column) - radius:int(column) + radius + 1].reshape(-1, 3)


def ramp(axis):
    """A volume whose value along ``axis`` is index / (size - 1), constant across the others."""
    values = np.linspace(0.0, 1.0, SHAPE[axis])
    shape = [1, 1, 1]
    shape[axis] = SHAPE[axis]
    return np.broadcast_to(values.reshape(shape), SHAPE).astype(np.float32)


def test_each_plane_shows_the_requested_slice():
    index = (5, 9, 3)
    for position, (title, fixed, _, _) in enumerate(PLANES):
        figure = plot_slices(ramp(fixed), index=index, window=(0, 1), crosshair=False)
        pixels = render(figure)
        ax = figure.axes[position]
        expected = 255 * index[fixed] / (SHAPE[fixed] - 1)
        centre = pixel(figure, pixels, ax, 3.5, 3.5)
        assert np.allclose(centre, expected, atol=3), (title, centre, expected)
        assert f"{'xyz'[fixed]} = {index[fixed]}" in ax.get_title()
        assert ax.get_title().startswith(title)


def test_axes_run_across_and_up_in_index_order():
    figure = plot_slices(ramp(0), window=(0, 1), crosshair=False)
    pixels = render(figure)
    axial = figure.axes[0]  # x across, y up
    left, right = pixel(figure, pixels, axial, 0.5, 8), pixel(figure, pixels, axial, 19.5, 8)
    assert left.mean() < 10 and right.mean() > 245
    figure = plot_slices(ramp(2), window=(0, 1), crosshair=False)
    pixels = render(figure)
    sagittal = figure.axes[2]  # y across, z up
    bottom, top = pixel(figure, pixels, sagittal, 8, 0.5), pixel(figure, pixels, sagittal, 8, 11.5)
    assert bottom.mean() < 10 and top.mean() > 245


def box_mask(z_slice):
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[4:10, 6:12, z_slice] = 1
    return mask


def test_filled_label_is_drawn_inside_the_label_only():
    image = np.full(SHAPE, 0.5, dtype=np.float32)
    figure = plot_slices(image, box_mask(7), index=(7, 8, 7), window=(0, 1), crosshair=False,
                         alpha=0.5)
    pixels = render(figure)
    axial = figure.axes[0]
    inside = pixel(figure, pixels, axial, 7.0, 9.0)
    outside = pixel(figure, pixels, axial, 15.0, 3.0)
    assert inside[1] - max(inside[0], inside[2]) > 60, inside
    assert np.ptp(outside) < 4, outside
    green = colour_share(panel_pixels(figure, pixels, axial), LABEL_COLOURS[0])
    assert green == pytest.approx(6 * 6 / (20 * 16), abs=0.03)


def test_overlay_follows_the_slice():
    image = np.full(SHAPE, 0.5, dtype=np.float32)
    figure = plot_slices(image, box_mask(7), index=(7, 8, 2), window=(0, 1), crosshair=False)
    pixels = render(figure)
    assert colour_share(panel_pixels(figure, pixels, figure.axes[0]), LABEL_COLOURS[0]) == 0
    # the coronal plane through y = 8 cuts the box at z = 7 only
    coronal = figure.axes[1]
    assert colour_share(panel_pixels(figure, pixels, coronal), LABEL_COLOURS[0]) > 0
    assert pixel(figure, pixels, coronal, 7.0, 7.5)[1] > pixel(figure, pixels, coronal, 7.0, 7.5)[0] + 40
    assert np.ptp(pixel(figure, pixels, coronal, 7.0, 3.5)) < 4


def test_prediction_has_its_own_colour_and_opacity_matters():
    image = np.full(SHAPE, 0.5, dtype=np.float32)
    pred = box_mask(7).astype(np.float32) * 0.9  # probabilities, read as >= 0.5
    strong = plot_slices(image, pred=pred, index=(7, 8, 7), window=(0, 1), alpha=0.8, crosshair=False)
    weak = plot_slices(image, pred=pred, index=(7, 8, 7), window=(0, 1), alpha=0.2, crosshair=False)
    strong_pixel = pixel(strong, render(strong), strong.axes[0], 7.0, 9.0)
    weak_pixel = pixel(weak, render(weak), weak.axes[0], 7.0, 9.0)
    assert strong_pixel[0] > weak_pixel[0] > 128 + 10
    assert colour_share(panel_pixels(strong, render(strong), strong.axes[0]), PRED_COLOURS[0]) > 0.05
    assert colour_share(panel_pixels(strong, render(strong), strong.axes[0]), LABEL_COLOURS[0]) == 0


def test_contour_draws_the_outline_not_the_inside():
    image = np.full(SHAPE, 0.5, dtype=np.float32)
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[2:18, 2:14, 6] = 1
    figure = plot_slices(image, mask, index=(7, 8, 6), window=(0, 1), overlay="contour",
                         crosshair=False)
    pixels = render(figure)
    axial = figure.axes[0]
    assert np.ptp(pixel(figure, pixels, axial, 10.0, 8.0)) < 4  # inside stays grey
    edge = pixel(figure, pixels, axial, 2.0, 8.0)  # on the outline (voxel edge at 2 mm)
    assert edge[1] - edge[0] > 60, edge
    share = colour_share(panel_pixels(figure, pixels, axial), LABEL_COLOURS[0])
    assert 0 < share < 0.25


def test_picture_keeps_the_voxel_aspect():
    image = np.zeros((40, 40, 10), dtype=np.float32)
    for spacing, expected in (((1, 1, 1), 10 / 40), ((1, 1, 4), 1.0), ((0.5, 0.5, 3), 30 / 20)):
        figure = plot_slices(image, spacing=spacing)
        figure.canvas.draw()
        box = figure.axes[1].get_window_extent()  # coronal: x across, z up
        assert box.height / box.width == pytest.approx(expected, rel=0.03), spacing


def test_crosshair_marks_the_other_planes():
    image = np.full(SHAPE, 0.2, dtype=np.float32)
    figure = plot_slices(image, index=(5, 9, 3), window=(0, 1))
    pixels = render(figure)
    axial = figure.axes[0]
    on_line = near(figure, pixels, axial, 5.5, 2.0)  # vertical line at x = 5 (voxel centre)
    assert colour_share(on_line, CROSSHAIR_COLOUR) > 0
    assert colour_share(near(figure, pixels, axial, 12.0, 2.0), CROSSHAIR_COLOUR) == 0
    across = near(figure, pixels, axial, 12.0, 9.5)  # horizontal line at y = 9
    assert colour_share(across, CROSSHAIR_COLOUR) > 0
    hidden = plot_slices(image, index=(5, 9, 3), window=(0, 1), crosshair=False)
    hidden_pixels = render(hidden)
    assert colour_share(near(hidden, hidden_pixels, hidden.axes[0], 5.5, 2.0), CROSSHAIR_COLOUR) == 0


def test_channel_and_window_choose_what_is_shown():
    image = np.stack([np.full(SHAPE, 0.1), np.full(SHAPE, 0.9)]).astype(np.float32)
    figure = plot_slices(image, channel=1, window=(0, 1), crosshair=False, channel_name="ADC")
    value = pixel(figure, render(figure), figure.axes[0], 3.5, 3.5)
    assert np.allclose(value, 0.9 * 255, atol=3)
    assert "ADC" in figure.axes[0].get_title()
    figure = plot_slices(image, channel=1, window=(0.0, 0.5), crosshair=False)
    assert np.allclose(pixel(figure, render(figure), figure.axes[0], 3.5, 3.5), 255, atol=1)


def test_draws_into_given_axes():
    figure = new_figure(9, 3)
    axes = figure.subplots(1, 3)
    returned = plot_slices(ramp(2), axes=axes, index=(1, 1, 11), window=(0, 1), crosshair=False)
    assert returned is figure
    assert np.allclose(pixel(figure, render(figure), axes[0], 3.5, 3.5), 255, atol=3)


def test_case_dict_gives_image_label_and_spacing():
    case = {"id": "case_00", "image": np.zeros((2,) + SHAPE, dtype=np.float32),
            "label": box_mask(7)[np.newaxis], "image_meta": {"spacing": (1.0, 1.0, 4.0)}}
    figure = plot_slices(case, index=(7, 8, 7))
    figure.canvas.draw()
    box = figure.axes[1].get_window_extent()
    assert box.height / box.width == pytest.approx(12 * 4 / 20, rel=0.03)
    assert any("truth 1" == text.get_text() for text in figure.legends[0].get_texts())


def test_nifti_path_is_read_channel_first_with_its_spacing(tmp_path):
    voxels = np.zeros(SHAPE + (2,), dtype=np.float32)
    voxels[..., 1] = 1.0
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    path = tmp_path / "case.nii.gz"
    nibabel.save(nibabel.Nifti1Image(voxels, affine), str(path))
    figure = plot_slices(path, channel=1, window=(0, 2), crosshair=False)
    pixels = render(figure)
    assert np.allclose(pixel(figure, pixels, figure.axes[0], 1.0, 1.0), 128, atol=3)
    box = figure.axes[1].get_window_extent()
    assert box.height / box.width == pytest.approx(12 * 3.0 / (20 * 0.5), rel=0.03)


@pytest.mark.parametrize("call, words", [
    (lambda: plot_slices(np.zeros(SHAPE), np.zeros((4, 4, 4))), "label has shape"),
    (lambda: plot_slices(np.zeros((20, 16, 12, 40))), "channel-last"),
    (lambda: plot_slices(np.zeros((1, 2) + SHAPE)), "batch[0]"),
    (lambda: plot_slices(np.zeros(SHAPE), index=(0, 0, 12)), "outside the volume"),
    (lambda: plot_slices(np.zeros(SHAPE), channel=1), "channel 1 does not exist"),
    (lambda: plot_slices(np.zeros(SHAPE), overlay="outline"), "overlay='contour'"),
    (lambda: plot_slices(np.zeros(SHAPE), window=(1, 0)), "low < high"),
    (lambda: plot_slices(np.zeros(SHAPE), spacing=(1, 0, 1)), "positive sizes"),
    (lambda: plot_slices("no/such/file.nii.gz"), "no/such/file.nii.gz: file not found"),
])
def test_bad_input_says_what_to_do(call, words):
    with pytest.raises(DataError) as error:
        call()
    assert words in str(error.value)
    assert "Fix:" in str(error.value)


def test_without_index_the_planes_cut_the_label_at_its_widest():
    label = np.zeros(SHAPE, dtype=np.int16)
    label[2:6, 10:15, 8] = 1
    label[3:5, 11:13, 9] = 1
    figure = plot_slices(np.zeros(SHAPE), label)
    titles = [ax.get_title().splitlines()[1] for ax in figure.axes]
    # z: 20 voxels at z = 8; y: 6 at y = 11 and 12 (tie: the later middle); x: 7 at x = 3 and 4
    assert titles == ["z = 8 / 11", "y = 12 / 15", "x = 4 / 19"]
    assert plot_slices(np.zeros(SHAPE)).axes[0].get_title().endswith("z = 6 / 11")


class FakeTensor:
    """Quacks like a torch tensor on a GPU: only .detach().cpu().numpy() gives numpy."""

    def __init__(self, array):
        self.array = array

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_tensors_are_accepted():
    figure = plot_slices(FakeTensor(ramp(2)[np.newaxis]), index=(1, 1, 11), window=(0, 1),
                         crosshair=False)
    assert np.allclose(pixel(figure, render(figure), figure.axes[0], 3.5, 3.5), 255, atol=3)


def test_plot_errors_colours_hits_false_positives_and_misses():
    from labkit.viz import plot_errors
    from labkit.viz.gallery import ERROR_COLOURS

    image = np.zeros(SHAPE, np.float32)
    label, pred = np.zeros(SHAPE, np.int16), np.zeros(SHAPE, np.int16)
    label[4:12, 4:10, 5:8] = 1
    pred[8:16, 4:10, 5:8] = 1  # half on the label, half beside it
    figure = plot_errors(image, label, pred, spacing=(1, 1, 1), index=(8, 6, 6), title="case 7")
    pixels = render(figure)
    axial = figure.axes[0]
    for x_mm, kind in ((6.5, "false negative"), (10.5, "true positive"), (14.5, "false positive")):
        assert colour_share(near(figure, pixels, axial, x_mm, 6.5), ERROR_COLOURS[kind]) > 0.8, kind
    assert colour_share(near(figure, pixels, axial, 2.5, 6.5), ERROR_COLOURS["true positive"]) == 0
    assert figure._suptitle.get_text() == "case 7"
    with pytest.raises(DataError, match="needs both a label and a prediction"):
        plot_errors(image, label, None)
