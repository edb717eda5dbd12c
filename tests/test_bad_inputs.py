"""Bad inputs: each one gets a DataError naming the file, the problem and the fix, or is
handled correctly (converted, repaired with a warning, or ignored). Every test makes its file."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from labkit.data import lung, prostate
from labkit.data.errors import DataError
from labkit.data.transforms import Compose, DataWarning, LoadNifti, LoadPNG, read_png
from labkit.metrics import dice

AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def _expect_data_error(call, path, words):
    """Run ``call``; it must raise a DataError naming ``path`` and containing ``words``."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message, message
    assert words.lower() in message.lower(), message
    assert "Fix:" in message
    return caught.value


def _save(array, path, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _prostate_pair(folder, image_shape=(16, 16, 6, 2), label=None, affine=AFFINE, name="prostate_00"):
    """A one-case Task05_Prostate folder; returns the case dict."""
    rng = np.random.default_rng(0)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = (rng.random(image_shape) * 500).astype(np.int16)
    if label is None:
        label = np.zeros(image_shape[:3], np.uint8)
        label[5:10, 5:10, 2:4] = 1
        label[7:9, 7:9, 2:4] = 2
    image_path = _save(image, folder / "imagesTr" / f"{name}.nii.gz", affine)
    label_path = _save(label, folder / "labelsTr" / f"{name}.nii.gz", affine)
    return {"id": name, "image": str(image_path), "label": str(label_path)}


def _chain(size=(8, 8, 4)):
    return Compose(prostate.preprocessing((1.6, 1.6, 3.0), size, labels="zones"))


# ---- NIfTI ----


def test_truncated_nifti(tmp_path):
    case = _prostate_pair(tmp_path / "Task05_Prostate")
    data = open(case["image"], "rb").read()
    open(case["image"], "wb").write(data[: len(data) // 2])
    _expect_data_error(lambda: _chain()(case), case["image"], "truncated")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not an image"))
    _expect_data_error(lambda: LoadNifti("image")({"image": str(path)}), path, "not a readable NIfTI")
    plain = tmp_path / "plain.nii"
    plain.write_text("hello")
    _expect_data_error(lambda: LoadNifti("image")({"image": str(plain)}), plain, "not a readable NIfTI")


def test_3d_image_where_4d_expected(tmp_path):
    case = _prostate_pair(tmp_path, image_shape=(16, 16, 6))
    error = _expect_data_error(lambda: _chain()(case), case["image"], "expected a 4D volume with 2 channels")
    assert "(16, 16, 6)" in str(error)


def test_4d_label_where_3d_expected(tmp_path):
    case = _prostate_pair(tmp_path)
    _save(np.zeros((16, 16, 6, 2), np.uint8), case["label"])
    _expect_data_error(lambda: _chain()(case), case["label"], "expected a 3D volume")


def test_5d_volume(tmp_path):
    path = _save(np.zeros((4, 4, 4, 1, 2), np.float32), tmp_path / "five.nii.gz")
    _expect_data_error(lambda: LoadNifti("image")({"image": str(path)}), path, "3D or 4D")


def test_label_grid_differs_from_image_grid(tmp_path):
    case = _prostate_pair(tmp_path)
    _save(np.zeros((16, 15, 6), np.uint8), case["label"])
    _expect_data_error(lambda: _chain()(case), case["label"], "differs from the image")


def test_label_affine_differs_from_image_affine(tmp_path):
    case = _prostate_pair(tmp_path)
    shifted = AFFINE.copy()
    shifted[0, 3] = 12.0
    _save(np.zeros((16, 16, 6), np.uint8), case["label"], shifted)
    _expect_data_error(lambda: _chain()(case), case["label"], "affine")


def test_label_values_outside_0_1_2(tmp_path):
    label = np.zeros((16, 16, 6), np.uint8)
    label[4:12, 4:12, 1:5] = 3
    case = _prostate_pair(tmp_path, label=label)
    _expect_data_error(lambda: _chain()(case), case["label"], "unexpected label values")


def test_nan_and_inf_voxels_are_replaced_with_a_warning(tmp_path):
    case = _prostate_pair(tmp_path)
    image = np.asarray(nib.load(case["image"]).dataobj).astype(np.float32)
    image[0, 0, 0, 0], image[1, 1, 1, 1] = np.nan, np.inf
    _save(image, case["image"])
    with pytest.warns(DataWarning, match="2 NaN/Inf voxels replaced"):
        out = _chain()(case)
    assert np.isfinite(out["image"]).all()


def test_constant_image_does_not_divide_by_zero(tmp_path):
    case = _prostate_pair(tmp_path)
    _save(np.full((16, 16, 6, 2), 100, np.int16), case["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a division by zero
        out = _chain()(case)
    assert np.isfinite(out["image"]).all()
    centre = out["image"][:, 2:-2, 2:-2, 1:-1]  # away from the zero-filled resampling edge
    assert np.ptp(centre) < 1e-5
    from labkit.data.transforms import normalize_intensity

    assert np.all(normalize_intensity(np.full((2, 4, 4, 4), 100.0)) == 0)


def test_empty_label_is_a_valid_case(tmp_path):
    case = _prostate_pair(tmp_path, label=np.zeros((16, 16, 6), np.uint8))
    out = _chain()(case)
    assert out["label"].sum() == 0
    assert dice(out["label"], out["label"]) == 1.0


def test_oblique_affine_is_handled(tmp_path):
    angle = np.deg2rad(14)
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                [0, 0, 1]]) @ np.diag([-0.8, 0.8, 3.0])
    case = _prostate_pair(tmp_path, affine=oblique)
    out = _chain(size=(16, 16, 6))(case)
    assert out["image"].shape == (2, 16, 16, 6)
    back = prostate.to_original_grid(out["label"], out)
    np.testing.assert_allclose(back.affine, oblique)
    truth = np.asarray(nib.load(case["label"]).dataobj) > 0
    assert dice(back.get_fdata() > 0, truth) > 0.6


def test_volume_too_large_for_the_memory_budget(tmp_path):
    case = _prostate_pair(tmp_path)
    load = LoadNifti("image", max_mb=0.001)
    _expect_data_error(lambda: load({"image": case["image"]}), case["image"], "budget")


def test_missing_file(tmp_path):
    path = tmp_path / "gone.nii.gz"
    _expect_data_error(lambda: LoadNifti("image")({"image": str(path)}), path, "file not found")


def test_image_without_label(tmp_path):
    folder = tmp_path / "Task05_Prostate"
    case = _prostate_pair(folder)
    shutil.copy(case["image"], folder / "imagesTr" / "prostate_01.nii.gz")
    _expect_data_error(lambda: prostate.list_cases(tmp_path), "prostate_01.nii.gz", "no label file")


# ---- data folders ----


@pytest.mark.parametrize("reader", [prostate.list_cases, lung.list_cases])
def test_missing_or_empty_data_folder(tmp_path, reader):
    with pytest.raises(DataError, match="no data found — run `make data` or fetch the real set"):
        reader(tmp_path / "nowhere")
    (tmp_path / "Task05_Prostate" / "imagesTr").mkdir(parents=True)
    (tmp_path / "MontgomerySet" / "CXR_png").mkdir(parents=True)
    with pytest.raises(DataError, match="no data found"):
        reader(tmp_path)


def test_malformed_dataset_json(tmp_path):
    folder = tmp_path / "Task05_Prostate"
    _prostate_pair(folder)
    (folder / "dataset.json").write_text('{"name": "PROSTATE", "training": [')
    _expect_data_error(lambda: prostate.list_cases(tmp_path), folder / "dataset.json", "not valid JSON")
    (folder / "dataset.json").write_text('{"training": "imagesTr"}')
    _expect_data_error(lambda: prostate.list_cases(tmp_path), folder / "dataset.json", "lacks the MSD fields")


def test_macos_and_windows_litter_is_ignored(tiny_prostate_root, tiny_lung_root, tmp_path):
    shutil.copytree(tiny_prostate_root / "Task05_Prostate", tmp_path / "Task05_Prostate")
    shutil.copytree(tiny_lung_root / "MontgomerySet", tmp_path / "MontgomerySet")
    for folder in (tmp_path / "Task05_Prostate" / "imagesTr", tmp_path / "Task05_Prostate" / "labelsTr",
                   tmp_path / "MontgomerySet" / "CXR_png"):
        (folder / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07")
        (folder / "._MCUCXR_0001_0.png").write_bytes(b"\x00\x05\x16\x07")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "__MACOSX").mkdir()
    assert len(prostate.list_cases(tmp_path)) == 8
    assert len(lung.list_cases(tmp_path)) == 12


def test_malformed_split_file(tiny_lung_root, tmp_path):
    shutil.copytree(tiny_lung_root / "MontgomerySet", tmp_path / "MontgomerySet")
    path = tmp_path / "MontgomerySet" / "labkit_splits.json"
    path.write_text("[1, 2")
    _expect_data_error(lambda: lung.load_splits(tmp_path), path, "malformed")


# ---- PNG ----


def _lung_case(folder, image, left=None, right=None):
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (folder / "MontgomerySet" / sub).mkdir(parents=True, exist_ok=True)
    name = "MCUCXR_0001_0.png"
    paths = {"image": folder / "MontgomerySet" / "CXR_png" / name,
             "left": folder / "MontgomerySet" / "ManualMask" / "leftMask" / name,
             "right": folder / "MontgomerySet" / "ManualMask" / "rightMask" / name}
    height, width = np.asarray(image).shape[:2]
    default = np.zeros((height, width), np.uint8)
    default[height // 4: 3 * height // 4, width // 8: width // 3] = 255
    image.save(paths["image"]) if isinstance(image, Image.Image) else Image.fromarray(image).save(paths["image"])
    Image.fromarray(default if left is None else left).save(paths["left"])
    Image.fromarray(default[:, ::-1].copy() if right is None else right).save(paths["right"])
    return {"id": "MCUCXR_0001_0", **{key: str(value) for key, value in paths.items()}}


def test_corrupt_png(tmp_path):
    case = _lung_case(tmp_path, np.full((20, 16), 100, np.uint8))
    data = open(case["image"], "rb").read()
    open(case["image"], "wb").write(data[:40])
    _expect_data_error(lambda: Compose(lung.preprocessing((8, 8)))(case), case["image"], "not a readable PNG")


def test_rgb_png_is_converted_to_gray(tmp_path):
    rgb = np.zeros((20, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    gray = read_png(str(path))
    assert gray.shape == (20, 16)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    np.testing.assert_allclose(gray, expected)


def test_rgba_png_is_converted_to_gray(tmp_path):
    rgba = np.zeros((12, 10, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 128, 255
    case = _lung_case(tmp_path, Image.fromarray(rgba, "RGBA"))
    out = LoadPNG(["image", "left", "right"])(case)
    assert out["image"].shape == (12, 10)
    assert out["image"].max() == pytest.approx(128 / 255)


def test_16_bit_png_full_range_and_12_bit_values(tmp_path):
    full = np.linspace(0, 65535, 200).astype(np.uint16).reshape(10, 20)
    Image.fromarray(full).save(tmp_path / "full.png")
    assert read_png(str(tmp_path / "full.png")).max() == pytest.approx(1.0)
    twelve = np.linspace(0, 4095, 200).astype(np.uint16).reshape(10, 20)
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    assert read_png(str(tmp_path / "twelve.png")).max() == pytest.approx(1.0)


def test_palette_png_is_converted(tmp_path):
    Image.fromarray(np.full((8, 8), 255, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert read_png(str(tmp_path / "p.png")).max() == pytest.approx(1.0)


def test_mask_size_differs_from_image_size(tmp_path):
    case = _lung_case(tmp_path, np.full((20, 16), 100, np.uint8), left=np.zeros((10, 8), np.uint8))
    _expect_data_error(lambda: Compose(lung.preprocessing((8, 8)))(case), case["left"], "differs from the image")


def test_missing_mask(tmp_path):
    case = _lung_case(tmp_path, np.full((20, 16), 100, np.uint8))
    Path(case["right"]).unlink()
    _expect_data_error(lambda: lung.list_cases(tmp_path), "rightMask", "right lung mask")


def test_all_black_image(tmp_path):
    case = _lung_case(tmp_path, np.zeros((20, 16), np.uint8))
    _expect_data_error(lambda: Compose(lung.preprocessing((8, 8)))(case), case["image"], "entirely black")


def test_black_padding_is_cut_off(tmp_path):
    image = np.zeros((40, 30), np.uint8)
    image[5:35, 3:27] = 120
    case = _lung_case(tmp_path, image)
    out = LoadPNG(["image", "left", "right"])(case)
    from labkit.data.transforms import CropBlackBorder, FuseMasks

    cropped = CropBlackBorder("image", ["label"])(FuseMasks("left", "right")(out))
    assert cropped["image"].shape == (30, 24) == cropped["label"].shape
