"""Prostate MRI (Medical Segmentation Decathlon, Task05): cases, splits, preprocessing.

On disk (real or synthetic, the reader cannot tell)::

    Task05_Prostate/dataset.json
    Task05_Prostate/imagesTr/prostate_00.nii.gz   4D: x, y, z, 2 channels (T2, ADC)
    Task05_Prostate/labelsTr/prostate_00.nii.gz   3D: 0 background, 1 PZ, 2 TZ

A prediction on the preprocessed grid goes back onto the scan's own grid with
:func:`to_original_grid` / :func:`save_prediction`, so 3D Slicer shows it aligned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labkit import paths
from labkit.data import splits
from labkit.data.errors import NO_DATA_FIX, NO_DATA_HELP, DataError
from labkit.data.readers import LoadNifti, is_junk
from labkit.data.wrappers import CropOrPad, MapLabels, NormalizeIntensity, Reorient, Resample
from labkit.io import atomic_path

LABEL_MAPPINGS = {"whole": {0: 0, 1: 1, 2: 1}, "zones": {0: 0, 1: 1, 2: 2}}


def dataset_dir(root=None) -> Path:
    """``<root>/Task05_Prostate`` (root defaults to ``LABKIT_DATA`` or ``./data``)."""
    return paths.prostate_dir(Path(root) if root is not None else None)


def read_dataset_json(folder) -> dict | None:
    """The parsed ``dataset.json`` (None when absent); malformed files raise DataError."""
    path, fix = Path(folder) / "dataset.json", ("restore it from the downloaded archive, or delete "
                                                 "the folder and run `make data`")
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(path, f"dataset.json is not valid JSON ({error})", fix) from None
    if not isinstance(record, dict) or not isinstance(record.get("training", []), list) \
            or not isinstance(record.get("labels", {}), dict):
        raise DataError(path, "dataset.json lacks the MSD fields ('training' list, 'labels' map)", fix)
    return record


def _nifti_files(folder: Path) -> dict:
    """{case id: path} of the NIfTI files in ``folder``, junk ignored."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_junk(path.name) or not path.is_file():
            continue
        for suffix in (".nii.gz", ".nii"):
            if path.name.endswith(suffix):
                found[path.name[: -len(suffix)]] = path
    return found


def list_cases(root=None) -> list[dict]:
    """Labelled cases ``[{'id', 'image', 'label'}]`` (paths), sorted by id; no data, a malformed
    ``dataset.json`` or an image without its label is a DataError."""
    folder = dataset_dir(root)
    images = _nifti_files(folder / "imagesTr")
    if not images:
        raise DataError(folder / "imagesTr", NO_DATA_FIX, NO_DATA_HELP)
    read_dataset_json(folder)
    labels = _nifti_files(folder / "labelsTr")
    cases = []
    for case_id, image in images.items():
        if case_id not in labels:
            raise DataError(image, f"no label file labelsTr/{image.name} for this image",
                            "restore the label, or remove the image from imagesTr")
        cases.append({"id": case_id, "image": str(image), "label": str(labels[case_id])})
    return cases


def load_splits(root=None, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """The fixed train / validation / test split of the labelled cases."""
    return splits.load_splits(dataset_dir(root), list_cases(root), fractions, seed)


def preprocessing(spacing=(1.0, 1.0, 1.0), size=(128, 128, 64), labels: str = "whole") -> list:
    """The transforms from file paths to network-ready arrays, read top to bottom (Lab 1 shows
    this list): image ``(2, X, Y, Z)`` float32, label ``(1, X, Y, Z)``.

    Args:
        spacing: voxel size in mm after resampling (x, y, z).
        size: voxels fed to the network (x, y, z), centre crop or zero pad.
        labels: ``'whole'`` (gland = 1) or ``'zones'`` (1 PZ, 2 TZ).
    """
    if labels not in LABEL_MAPPINGS:
        raise ValueError(f"labels must be 'whole' or 'zones', got {labels!r}")
    both = ["image", "label"]
    return [
        LoadNifti(both, channels={"image": 2, "label": 1}, integer_keys=["label"]),
        MapLabels("label", LABEL_MAPPINGS[labels]),  # on the small original grid: checks values early
        Reorient(both),
        Resample(["image"], spacing, order=1),
        Resample(["label"], spacing, order=0),  # nearest neighbour keeps the label values
        NormalizeIntensity(["image"]),
        CropOrPad(both, size),
    ]


def to_original_grid(pred, case: dict):
    """A label map ``pred`` (``(X, Y, Z)`` or ``(1, X, Y, Z)``) on the grid of the preprocessed
    ``case['image']`` as a uint8 ``nibabel.Nifti1Image`` on the scan's own grid.

    Nearest-neighbour sampling through ``inverse(grid affine) @ original affine`` undoes the
    crop / pad, the resampling and the reorientation at once.
    """
    import nibabel as nib
    from scipy import ndimage

    meta = case.get("image_meta")
    if not meta or "grid_affine" not in meta:
        raise DataError(None, f"case {case.get('id')!r} has no image_meta",
                        "pass the case returned by the preprocessing chain (LoadNifti first)")
    pred = np.asarray(pred)
    if pred.ndim == 4 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.ndim != 3:
        raise ValueError(f"pred must be (X, Y, Z) or (1, X, Y, Z), got shape {pred.shape}")
    matrix = np.linalg.inv(meta["grid_affine"]) @ meta["affine"]  # original voxel -> pred voxel
    values = ndimage.affine_transform(np.rint(pred).astype(np.float32), matrix[:3, :3],
                                      offset=matrix[:3, 3], output_shape=tuple(meta["shape"]),
                                      order=0, cval=0.0)
    image = nib.Nifti1Image(values.astype(np.uint8), meta["affine"])
    image.set_qform(meta["affine"], code=1)
    image.set_sform(meta["affine"], code=1)
    image.header.set_xyzt_units("mm")
    return image


def save_prediction(pred, case: dict, path) -> Path:
    """Write :func:`to_original_grid` as NIfTI (atomically); returns the path."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii.gz"
    with atomic_path(path, suffix=suffix) as temporary:
        nib.save(to_original_grid(pred, case), str(temporary))
    return path
