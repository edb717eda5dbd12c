"""The widget layer: controls change the settings and the picture; headless shows a static figure."""

import nibabel
import numpy as np
import pytest

import labkit.viz.widgets as widgets_module
from labkit.data.errors import DataError
from labkit.viz import Gallery, SliceViewer, show_gallery, show_volume


def volume():
    """Two channels; the value along z differs per slice, a label box in the middle."""
    ramp = np.linspace(0, 1, 10, dtype=np.float32)
    image = np.stack([np.broadcast_to(ramp, (16, 12, 10)), np.full((16, 12, 10), 3.0)])
    label = np.zeros((16, 12, 10), dtype=np.int16)
    label[4:12, 3:9, 3:7] = 1
    return image.astype(np.float32), label


def controls(viewer):
    """The viewer's ipywidgets by kind: channel, overlay, opacity, x/y/z sliders, window."""
    top, sliders, window = viewer.widget.children[:3]
    channel, overlay, opacity = top.children
    x, y, z = sliders.children
    return {"channel": channel, "overlay": overlay, "opacity": opacity, "x": x, "y": y, "z": z,
            "window": window}


def test_sliders_move_the_planes_and_change_the_picture():
    image, label = volume()
    viewer = SliceViewer(image, label, spacing=(1, 1, 2), channel_names=["T2", "ADC"])
    parts = controls(viewer)
    assert (parts["x"].value, parts["y"].value, parts["z"].value) == (8, 6, 5)
    assert parts["z"].max == 9 and "labkit-slider-z" in parts["z"]._dom_classes
    before = viewer._picture.value
    parts["z"].value = 2
    assert viewer.index == [8, 6, 2]
    assert viewer.figure().axes[0].get_title().startswith("Axial\nz = 2 / 9")
    assert viewer._picture.value != before and bytes(viewer._picture.value).startswith(b"\x89PNG")
    assert viewer._caption.value == "T2 · x = 8, y = 6, z = 2"


def test_channel_overlay_and_opacity_controls():
    image, label = volume()
    viewer = SliceViewer(image, label, channel_names=["T2", "ADC"])
    parts = controls(viewer)
    parts["channel"].value = 1
    assert viewer.channel == 1 and "ADC" in viewer.figure().axes[0].get_title()
    low, high = viewer.window
    assert low <= 3.0 <= high  # the window moved to the new channel's range
    parts["overlay"].value = "off"
    assert viewer.figure().legends == []
    parts["overlay"].value = "contour"
    assert viewer.overlay == "contour" and viewer.figure().legends
    parts["opacity"].value = 0.8
    assert viewer.alpha == pytest.approx(0.8)


def test_one_channel_disables_the_choice_and_no_mask_disables_overlays():
    viewer = SliceViewer(np.zeros((8, 8, 8), dtype=np.float32))
    parts = controls(viewer)
    assert parts["channel"].disabled and parts["overlay"].disabled


def test_channel_names_must_match():
    image, _ = volume()
    with pytest.raises(DataError, match="1 channel names for 2 channels"):
        SliceViewer(image, channel_names=["T2"])


def test_viewer_reads_a_case_with_nifti_paths(tmp_path):
    image, label = volume()
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(np.moveaxis(image, 0, -1), affine), str(tmp_path / "image.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label.astype(np.uint8), affine), str(tmp_path / "label.nii.gz"))
    viewer = SliceViewer({"id": "prostate_00", "image": tmp_path / "image.nii.gz",
                          "label": str(tmp_path / "label.nii.gz")})
    assert viewer.volume.shape == (2, 16, 12, 10) and viewer.spacing == (0.5, 0.5, 3.0)
    assert int(viewer.label.sum()) == int(label.sum())


@pytest.fixture
def kernel_display(monkeypatch):
    """Pretend to be in a kernel and record what is displayed."""
    shown = []
    monkeypatch.setattr("labkit.viz.display.in_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda *objects, **_: shown.extend(objects))
    return shown


def test_headless_viewers_show_a_static_picture(monkeypatch, kernel_display):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    image, label = volume()
    SliceViewer(image, label)._ipython_display_()
    Gallery(np.zeros((5, 8, 8)), per_page=2)._ipython_display_()
    assert len(kernel_display) == 2
    assert all(picture.data.startswith(b"\x89PNG") for picture in kernel_display)


def test_front_end_viewer_shows_its_widget(monkeypatch, kernel_display):
    monkeypatch.setattr(widgets_module, "is_headless", lambda: False)
    image, label = volume()
    viewer = SliceViewer(image, label)
    viewer._ipython_display_()
    assert kernel_display == [viewer.widget]
    assert "labkit-slice-viewer" in viewer.widget._dom_classes


def test_show_functions_display_a_viewer(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **_: shown.extend(objects))
    image, label = volume()
    show_volume(image, label, spacing=(1, 1, 2))
    show_gallery(np.zeros((3, 8, 8)))
    assert isinstance(shown[0], SliceViewer) and shown[0].spacing == (1.0, 1.0, 2.0)
    assert isinstance(shown[1], Gallery)


def test_gallery_buttons_page_through():
    rng = np.random.default_rng(2)
    gallery = Gallery(rng.random((5, 8, 8)), rng.random((5, 8, 8)) > 0.5, per_page=2)
    previous, following, slider = gallery.widget.children[0].children
    first = gallery._picture.value
    previous.click()
    assert gallery.page == 0
    following.click()
    assert gallery.page == 1 and slider.value == 2 and gallery._picture.value != first
    assert gallery._caption.value == "page 2 / 3"
    following.click()
    following.click()
    assert gallery.page == 2  # the last page, it does not go further


def test_gallery_checks_its_input_at_once():
    with pytest.raises(DataError, match="2 labels for 3 images"):
        Gallery(np.zeros((3, 8, 8)), np.zeros((2, 8, 8)))


def threshold_cases():
    image, label = volume()
    prob = np.zeros(label.shape, np.float32)
    prob[4:12, 3:9, 3:7] = 0.6  # the label, found at 0.6
    prob[12:16, 3:9, 3:7] = 0.4  # beside it, false positives at thresholds below 0.4
    return [{"id": "case_a", "note": "best", "image": image, "label": label[None], "prob": prob},
            {"id": "case_b", "image": image, "label": label, "prob": np.zeros_like(prob)}]


def test_threshold_viewer_gives_the_dice_of_each_threshold():
    from labkit.viz import ThresholdViewer

    viewer = ThresholdViewer(threshold_cases(), threshold=0.5, spacing=(1, 1, 2))
    assert viewer.dice() == pytest.approx(1.0)
    assert viewer.dice(threshold=0.3) == pytest.approx(2 * 192 / (192 + 288))  # 96 false positives
    assert viewer.dice(case=1) == 0.0
    assert viewer.caption() == "best case_a: Dice 1.000 at threshold 0.50"
    case, threshold = viewer.widget.children[0].children
    first = viewer._picture.value
    threshold.value = 0.3
    assert viewer.threshold == pytest.approx(0.3) and viewer._picture.value != first
    case.value = 1
    assert viewer._caption.value == "case_b: Dice 0.000 at threshold 0.30"


def test_threshold_viewer_headless_draws_every_case(monkeypatch, kernel_display):
    from labkit.viz import ThresholdViewer

    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    ThresholdViewer(threshold_cases())._ipython_display_()
    assert len(kernel_display) == 2 and all(p.data.startswith(b"\x89PNG") for p in kernel_display)
    with pytest.raises(DataError, match="missing: \\['prob'\\]"):
        ThresholdViewer([{"id": "x", "image": np.zeros((4, 4, 4)), "label": np.zeros((4, 4, 4))}])
