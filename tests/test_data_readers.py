"""Readers, splits, ready-made chains and the way back to the original grid."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from labkit.data import lung, prostate, splits
from labkit.data.transforms import Compose
from labkit.metrics import dice


def test_prostate_cases_are_sorted_paths(tiny_prostate_root):
    cases = prostate.list_cases(tiny_prostate_root)
    assert len(cases) == 8
    assert [c["id"] for c in cases] == sorted(c["id"] for c in cases)
    assert all(c["image"].endswith(f"imagesTr/{c['id']}.nii.gz") for c in cases)
    assert all(c["label"].endswith(f"labelsTr/{c['id']}.nii.gz") for c in cases)


def test_root_defaults_to_labkit_data(tiny_prostate_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tiny_prostate_root))
    assert prostate.list_cases() == prostate.list_cases(tiny_prostate_root)


def test_lung_cases(tiny_lung_root):
    cases = lung.list_cases(tiny_lung_root)
    assert len(cases) == 12
    assert set(cases[0]) == {"id", "image", "left", "right"}
    assert "leftMask" in cases[0]["left"] and "rightMask" in cases[0]["right"]


def test_split_ids_fractions_and_seed():
    ids = [f"case_{i:02d}" for i in range(20)]
    parts = splits.split_ids(ids, (0.7, 0.15, 0.15), seed=0)
    assert [len(parts[p]) for p in splits.PARTS] == [14, 3, 3]
    assert sorted(sum(parts.values(), [])) == ids
    assert parts == splits.split_ids(list(reversed(ids)), seed=0)
    assert parts != splits.split_ids(ids, seed=1)
    small = splits.split_ids(ids[:4])
    assert len(small["validation"]) == 1 and len(small["test"]) == 1


def test_splits_are_written_once_and_reused(tiny_lung_root, tmp_path):
    folder = tmp_path / "MontgomerySet"
    shutil.copytree(tiny_lung_root / "MontgomerySet", folder)
    first = lung.load_splits(tmp_path, seed=0)
    record = json.loads((folder / splits.SPLITS_FILE).read_text())
    assert record["train"] == [c["id"] for c in first["train"]]
    again = lung.load_splits(tmp_path, seed=99)  # the written split wins over a new seed
    assert [c["id"] for c in again["test"]] == [c["id"] for c in first["test"]]
    assert all(set(c) == {"id", "image", "left", "right"} for c in again["train"])


def test_splits_rewritten_when_cases_change(tiny_lung_root, tmp_path):
    folder = tmp_path / "MontgomerySet"
    shutil.copytree(tiny_lung_root / "MontgomerySet", folder)
    lung.load_splits(tmp_path)
    (folder / "CXR_png" / "MCUCXR_0001_0.png").unlink(missing_ok=True)
    for path in (folder / "CXR_png").glob("MCUCXR_0001_*.png"):
        path.unlink()
    parts = lung.load_splits(tmp_path)
    assert len(sum(parts.values(), [])) == 11


def test_prostate_preprocessing_shapes_and_label_modes(tiny_prostate_root):
    case = prostate.list_cases(tiny_prostate_root)[0]
    whole = Compose(prostate.preprocessing((4.0, 4.0, 4.0), (16, 16, 12), labels="whole"))(case)
    zones = Compose(prostate.preprocessing((4.0, 4.0, 4.0), (16, 16, 12), labels="zones"))(case)
    assert whole["image"].shape == (2, 16, 16, 12) and whole["image"].dtype == np.float32
    assert whole["label"].shape == (1, 16, 16, 12) and whole["label"].dtype == np.float32
    assert set(np.unique(whole["label"]).tolist()) == {0.0, 1.0}
    assert set(np.unique(zones["label"]).tolist()) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(whole["label"], (zones["label"] > 0).astype(np.float32))
    with pytest.raises(ValueError, match="whole"):
        prostate.preprocessing(labels="all")


def test_lung_preprocessing(tiny_lung_root):
    case = lung.list_cases(tiny_lung_root)[0]
    out = Compose(lung.preprocessing((32, 48)))(case)
    assert out["image"].shape == (32, 48) and out["label"].shape == (32, 48)
    assert out["image"].min() >= 0 and out["image"].max() <= 1 and out["image"].dtype == np.float32
    assert set(np.unique(out["label"]).tolist()) == {0.0, 1.0}
    assert "left" not in out and "right" not in out


def test_prediction_back_on_the_original_grid_is_exact_without_resizing(tiny_prostate_root):
    """Same spacing, no crop: the round trip must give back the label voxel for voxel."""
    for case in prostate.list_cases(tiny_prostate_root)[:4]:  # includes flipped affines
        original = nib.load(case["label"])
        spacing = tuple(float(s) for s in original.header.get_zooms()[:3])
        chain = prostate.preprocessing(spacing, original.shape, labels="zones")
        prepared = Compose(chain)(case)
        back = prostate.to_original_grid(prepared["label"], prepared)
        np.testing.assert_allclose(back.affine, original.affine)
        np.testing.assert_array_equal(back.get_fdata(), np.asarray(original.dataobj))


def test_prediction_back_on_the_original_grid_after_resampling_and_crop(tiny_prostate_root, tmp_path):
    case = prostate.list_cases(tiny_prostate_root)[3]
    original = nib.load(case["label"])
    prepared = Compose(prostate.preprocessing((2.0, 2.0, 3.0), (48, 48, 32), labels="whole"))(case)
    path = prostate.save_prediction(prepared["label"], prepared, tmp_path / "pred.nii.gz")
    saved = nib.load(path)
    assert saved.shape == original.shape
    np.testing.assert_allclose(saved.affine, original.affine)
    assert dice(saved.get_fdata() > 0, np.asarray(original.dataobj) > 0) > 0.85
    assert not list(tmp_path.glob(".pred*"))  # no temporary file left behind


def test_to_original_grid_rejects_a_case_without_meta():
    with pytest.raises(ValueError, match="image_meta"):
        prostate.to_original_grid(np.zeros((4, 4, 4)), {"id": "x"})


def test_lung_prediction_back_on_the_radiograph_grid(tiny_lung_root):
    """Crop and resize undone: the prepared label lands on the lungs as read from disk."""
    padded = 0
    for case in lung.list_cases(tiny_lung_root):
        original = lung.load_original(case)
        prepared = Compose(lung.preprocessing((64, 64)))(case)
        back = lung.to_original_grid(prepared["label"], original) > 0.5
        assert back.shape == original["image"].shape == original["label"].shape
        assert dice(back, original["label"]) > 0.9
        rows, columns = original["box"]
        outside = np.ones(back.shape, bool)
        outside[rows, columns] = False
        assert not back[outside].any()
        padded += int(outside.any())
    assert padded, "the tiny set should hold at least one radiograph with black padding"


def test_lung_pixel_spacing_real_and_synthetic(tiny_lung_root, tmp_path):
    assert lung.pixel_spacing(tiny_lung_root) == (0.7, 0.7)
    shutil.copytree(tiny_lung_root / "MontgomerySet", tmp_path / "MontgomerySet")
    (tmp_path / "MontgomerySet" / "SYNTHETIC.txt").unlink()
    assert lung.pixel_spacing(tmp_path) == (0.0875, 0.0875)
    assert "0.7 mm" in (tiny_lung_root / "MontgomerySet" / "README.txt").read_text()
