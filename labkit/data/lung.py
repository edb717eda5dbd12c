"""Chest X-rays (Montgomery County set): cases, splits, preprocessing.

On disk (real or synthetic, the reader cannot tell)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png           grayscale radiograph (_1: abnormal)
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png   patient's left lung, 0/255
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png  patient's right lung, 0/255

Evaluation goes back the other way: :func:`load_original` reads a case as it is on disk,
:func:`to_original_grid` puts a prediction back on the radiograph's own pixels, and
:func:`pixel_spacing` gives their size, so distances come out in mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labkit import paths
from labkit.data import arrays, splits
from labkit.data.errors import NO_DATA_FIX, NO_DATA_HELP, DataError
from labkit.data.readers import LoadPNG, is_junk
from labkit.data.wrappers import CropBlackBorder, FuseMasks, NormalizeIntensity, Resize

MONTGOMERY_PIXEL_SPACING_MM = 0.0875  # both directions, as the set's README documents it
# the synthetic radiographs' pixel size (the real set's 0.0875 mm x 8); data_scripts/phantoms.py
# draws them at this size and writes it into their README.txt
SYNTHETIC_PIXEL_SPACING_MM = 0.7


def dataset_dir(root=None) -> Path:
    """``<root>/MontgomerySet`` (root defaults to ``LABKIT_DATA`` or ``./data``)."""
    return paths.lung_dir(Path(root) if root is not None else None)


def _png_files(folder: Path) -> dict:
    """{case id: path} of the PNG files in ``folder``, junk ignored."""
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.iterdir())
            if path.is_file() and not is_junk(path.name) and path.suffix.lower() == ".png"}


def list_cases(root=None) -> list[dict]:
    """Cases ``[{'id', 'image', 'left', 'right'}]`` (paths), sorted by id; no data or an image
    without one of its masks is a DataError."""
    folder = dataset_dir(root)
    images = _png_files(folder / "CXR_png")
    if not images:
        raise DataError(folder / "CXR_png", NO_DATA_FIX, NO_DATA_HELP)
    masks = {side: _png_files(folder / "ManualMask" / f"{side}Mask") for side in ("left", "right")}
    cases = []
    for case_id, image in images.items():
        case = {"id": case_id, "image": str(image)}
        for side, found in masks.items():
            if case_id not in found:
                raise DataError(folder / "ManualMask" / f"{side}Mask" / image.name,
                                f"the {side} lung mask of {image.name} is missing",
                                "restore the mask from the archive, or remove the image from CXR_png")
            case[side] = str(found[case_id])
        cases.append(case)
    return cases


def load_splits(root=None, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """The fixed train / validation / test split of the cases."""
    return splits.load_splits(dataset_dir(root), list_cases(root), fractions, seed)


def preprocessing(size=(256, 256)) -> list:
    """The transforms from file paths to network-ready arrays of ``size`` (height, width), read
    top to bottom (Lab 2 shows this list): image ``(H, W)`` float32 in [0, 1], label ``(H, W)``
    float32 in {0, 1}."""
    return [
        LoadPNG(["image", "left", "right"]),
        FuseMasks("left", "right", out="label"),
        CropBlackBorder("image", ["label"]),
        Resize(["image", "label"], size, orders=(1, 0)),
        NormalizeIntensity(["image"], mode="minmax", per_channel=False),
    ]


def pixel_spacing(root=None) -> tuple[float, float]:
    """Millimetres per pixel (rows, columns) of the radiographs on disk.

    The Montgomery set documents 0.0875 mm in both directions; a synthetic set made by
    ``make data`` has its own (``SYNTHETIC_PIXEL_SPACING_MM``, also written in its README.txt).
    """
    if paths.data_source(dataset_dir(root)) == "synthetic":
        return (SYNTHETIC_PIXEL_SPACING_MM,) * 2
    return (MONTGOMERY_PIXEL_SPACING_MM,) * 2


def load_original(case: dict) -> dict:
    """A case of :func:`list_cases` as read from disk, before any cropping or resizing:
    ``{'id', 'image'`` (H, W) float32 in [0, 1], ``'label'`` (H, W) bool (both lungs), ``'box'``
    (row slice, column slice): the part the preprocessing keeps after cutting the black padding}.

    Example:
        >>> original = load_original(test_cases[0])             # doctest: +SKIP
        >>> pred = to_original_grid(prob, original) > 0.5       # on the radiograph's pixels
    """
    loaded = FuseMasks("left", "right", out="label")(LoadPNG(["image", "left", "right"])(case))
    crop = CropBlackBorder("image")
    box = arrays.black_border_box(loaded["image"], crop.threshold)
    if box is None:
        crop(loaded)  # raises the DataError that names the file
    return {"id": case["id"], "image": loaded["image"], "label": loaded["label"] > 0.5, "box": box}


def to_original_grid(prob, original: dict) -> np.ndarray:
    """A probability map on the network's grid, back on the radiograph's own (H, W) grid: resized
    (linear) to the part of the radiograph the preprocessing kept, placed where that part was, the
    cut padding 0; threshold the float32 result at 0.5 for a mask.

    Args:
        prob: (h, w) lung probabilities from the network.
        original: what :func:`load_original` returned for the same case.
    """
    rows, columns = original["box"]
    out = np.zeros(original["image"].shape, np.float32)
    out[rows, columns] = arrays.resize(np.asarray(prob, np.float32), (rows.stop - rows.start,
                                                                       columns.stop - columns.start), order=1)
    return out
