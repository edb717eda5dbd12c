"""Synthetic data: official layouts, determinism, atomic building, and "learnable but not trivial"."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_scripts"))
import phantoms  # noqa: E402

from labkit import paths
from labkit.data import lung, prostate
from labkit.metrics import dice

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    """``data_scripts/make_phantoms.py`` as a module."""
    spec = importlib.util.spec_from_file_location("make_phantoms",
                                                  ROOT / "data_scripts" / "make_phantoms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prostate_layout_and_dataset_json(tiny_prostate_root):
    folder = tiny_prostate_root / "Task05_Prostate"
    record = json.loads((folder / "dataset.json").read_text())
    assert record["modality"] == {"0": "T2", "1": "ADC"}
    assert record["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert record["synthetic"] is True
    assert record["numTraining"] == len(record["training"]) == 8
    for entry in record["training"]:
        assert (folder / entry["image"]).is_file() and (folder / entry["label"]).is_file()
    assert all((folder / name).is_file() for name in record["test"])
    assert paths.data_source(folder) == "synthetic"


def test_prostate_volumes_are_4d_int16_with_zones(tiny_prostate_root):
    for case in prostate.list_cases(tiny_prostate_root):
        image, label = nib.load(case["image"]), nib.load(case["label"])
        assert image.ndim == 4 and image.shape[3] == 2
        assert image.get_data_dtype() == np.int16
        assert image.shape[:3] == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) == {0, 1, 2}


def test_default_prostate_geometry_is_msd_like():
    rng = np.random.default_rng(3)
    shapes, spacings, flipped = [], [], 0
    for _ in range(6):
        shape, affine, spacing = phantoms._prostate_affine(rng, phantoms.DEFAULT_PROSTATE)
        shapes.append(shape)
        spacings.append(spacing)
        flipped += int((np.diag(affine)[:2] < 0).any())
    assert all(256 <= s[0] == s[1] <= 384 and 11 <= s[2] <= 24 for s in shapes)
    assert all(0.4 < s[0] < 0.95 and 3.0 <= s[2] <= 4.0 for s in spacings)
    assert flipped >= 1


def test_peripheral_zone_lies_posterior_to_transition_zone(tiny_prostate_root):
    """After reorientation to RAS, the PZ centroid is behind (lower y than) the TZ centroid."""
    from labkit.data.transforms import reorient_to_canonical

    for case in prostate.list_cases(tiny_prostate_root):
        label = nib.load(case["label"])
        array, _ = reorient_to_canonical(np.asarray(label.dataobj)[None], label.affine)
        y = np.arange(array.shape[2])[None, None, :, None]
        pz_y = (y * (array == 1)).sum() / (array == 1).sum()
        tz_y = (y * (array == 2)).sum() / (array == 2).sum()
        assert pz_y < tz_y, case["id"]


def test_lung_layout(tiny_lung_root):
    from PIL import Image

    folder = tiny_lung_root / "MontgomerySet"
    cases = lung.list_cases(tiny_lung_root)
    assert len(cases) == 12
    for case in cases:
        with Image.open(case["image"]) as image:
            assert image.mode.startswith("I")  # 16-bit grayscale
            pixels = np.asarray(image)
            size = image.size
        assert pixels.max() <= 4095
        for side in ("left", "right"):
            with Image.open(case[side]) as mask:
                assert mask.mode == "L" and mask.size == size
                assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}
        assert (folder / "ClinicalReadings" / f"{case['id']}.txt").is_file()
    assert paths.data_source(folder) == "synthetic"


def test_left_lung_is_on_the_image_right():
    image, left, right = phantoms.make_lung_case(np.random.default_rng(5))
    columns = np.arange(image.shape[1])
    assert (columns * (left > 0)).sum() / (left > 0).sum() > (columns * (right > 0)).sum() / (right > 0).sum()


def test_same_seed_same_data_different_seed_different_data():
    first = phantoms.make_prostate_case(np.random.default_rng([0, 5, 1]), phantoms.TINY_PROSTATE)
    again = phantoms.make_prostate_case(np.random.default_rng([0, 5, 1]), phantoms.TINY_PROSTATE)
    other = phantoms.make_prostate_case(np.random.default_rng([1, 5, 1]), phantoms.TINY_PROSTATE)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_sets_are_deterministic_by_seed_whatever_the_workers(tmp_path):
    for name, workers in (("a", 1), ("b", 2)):
        phantoms.write_lung_set(tmp_path / name, n_cases=5, seed=7, geometry=phantoms.TINY_LUNG,
                                workers=workers)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


def test_existing_set_is_skipped_and_failed_build_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "Task05_Prostate").mkdir()
    (tmp_path / "Task05_Prostate" / "mine.txt").write_text("real data")
    messages = []
    outcome = load_script().make_default_sets(tmp_path, only="prostate", log=messages.append)
    assert outcome == {"prostate": "exists", "lung": "skipped"}
    assert "already exists" in messages[0]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(phantoms, "make_lung_case", broken)
    with pytest.raises(RuntimeError):
        phantoms.write_lung_set(tmp_path / "MontgomerySet", n_cases=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task05_Prostate"]


def _best_threshold_dice(images, truths) -> float:
    best = 0.0
    for threshold in np.linspace(0.02, 0.98, 49):
        for dark in (False, True):
            scores = [dice(image < threshold if dark else image > threshold, truth)
                      for image, truth in zip(images, truths, strict=True)]
            best = max(best, float(np.mean(scores)))
    return best


def _unit(array):
    low, high = np.percentile(array, [1, 99])
    return np.clip((array - low) / (high - low), 0, 1)


def test_a_single_intensity_threshold_does_not_solve_the_lungs():
    images, truths = [], []
    for number in range(8):
        image, left, right = phantoms.make_lung_case(np.random.default_rng([0, 12, number]),
                                                     phantoms.LungGeometry(long_side=(160, 200)))
        images.append(_unit(image.astype(float)))
        truths.append((left > 0) | (right > 0))
    assert _best_threshold_dice(images, truths) < 0.7


@pytest.mark.parametrize("channel", [0, 1])
def test_a_single_intensity_threshold_does_not_solve_the_prostate(channel):
    geometry = phantoms.ProstateGeometry(in_plane_sizes=(96,), slices=(12, 14))
    images, truths = [], []
    for number in range(4):
        image, label, _ = phantoms.make_prostate_case(np.random.default_rng([0, 5, number]), geometry)
        images.append(_unit(image[..., channel].astype(float)))
        truths.append(label > 0)
    assert _best_threshold_dice(images, truths) < 0.7


def test_script_builds_one_set_and_reports(tmp_path):
    command = [sys.executable, str(ROOT / "data_scripts" / "make_phantoms.py"), "--root",
               str(tmp_path), "--only", "lung", "--lung-cases", "2", "--seed", "3",
               "--lung-sizes", "100", "120"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lung built" in done.stdout and "prostate skipped" in done.stdout
    images = sorted((tmp_path / "MontgomerySet" / "CXR_png").glob("*.png"))
    assert len(images) == 2
    from PIL import Image

    with Image.open(images[0]) as image:
        assert 100 <= max(image.size) <= 120
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "lung exists" in again.stdout


def test_script_prostate_sizes_and_bad_arguments(tmp_path):
    script = str(ROOT / "data_scripts" / "make_phantoms.py")
    done = subprocess.run([sys.executable, script, "--root", str(tmp_path), "--only", "prostate",
                           "--prostate-cases", "2", "--prostate-sizes", "24", "--prostate-slices", "8", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shapes = {nib.load(p).shape for p in (tmp_path / "Task05_Prostate" / "imagesTr").glob("*.nii.gz")}
    assert all(s[:2] == (24, 24) and 8 <= s[2] <= 9 and s[3] == 2 for s in shapes)
    bad = subprocess.run([sys.executable, script, "--root", str(tmp_path), "--lung-sizes", "300", "200"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "MIN is larger" in bad.stderr
