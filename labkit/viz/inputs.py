"""Turn what a notebook has at hand (arrays, tensors, a case dict, a NIfTI path) into arrays.

Private helpers shared by the plotting functions and the widgets. Every problem is reported as
a :class:`labkit.data.errors.DataError` saying what was found and what to pass instead.
"""

from __future__ import annotations

import os

import numpy as np

MAX_CHANNELS = 16


def data_error(path, problem: str, fix: str) -> ValueError:
    """A :class:`labkit.data.errors.DataError` to raise (imported here: ``import labkit.viz``
    does not load the whole data layer)."""
    from labkit.data.errors import DataError

    return DataError(path, problem, fix)


def to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array, a PyTorch tensor, a TensorFlow tensor or a list."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf.Tensor
        value = value.numpy()
    return np.asarray(value)


def is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def load_nifti(path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file's voxels, channel-first ``(C, X, Y, Z)`` and turned to RAS, and its spacing in mm."""
    from labkit.data.arrays import reorient_to_canonical
    from labkit.data.readers import read_nifti

    voxels, affine = reorient_to_canonical(*read_nifti(os.fspath(path)))
    return voxels, tuple(float(size) for size in np.linalg.norm(affine[:3, :3], axis=0))


def as_volume(image, name: str = "image") -> np.ndarray:
    """A channel-first float32 volume ``(C, X, Y, Z)`` from ``(X, Y, Z)`` or ``(C, X, Y, Z)``."""
    array = to_numpy(image)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4:
        raise data_error(None, f"{name} has shape {array.shape}, a volume needs 3 or 4 dimensions",
                        "pass one case as (X, Y, Z) or channel-first (C, X, Y, Z), e.g. batch[0]"
                        if array.ndim == 5 else
                        "pass a 3D volume; for 2D images use plot_gallery / show_gallery")
    if array.shape[0] > MAX_CHANNELS:
        raise data_error(None, f"{name} has shape {array.shape}: {array.shape[0]} channels looks "
                        "like a channel-last volume", "move the channels first with "
                        "np.moveaxis(image, -1, 0)")
    return array.astype(np.float32, copy=False)


def as_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """An integer class map of ``shape`` (the image's spatial shape), or None.

    Accepts class maps, boolean masks, probabilities (read as ``>= 0.5``), a leading channel of
    size 1, or several channels (one score per class, background first: the arg-max is taken).
    """
    if mask is None:
        return None
    array = to_numpy(mask)
    if array.ndim == len(shape) + 1:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    if array.shape != tuple(shape):
        raise data_error(None, f"{name} has shape {array.shape} but the image has {tuple(shape)}",
                        f"pass a {name} on the image's grid (same size, one channel at most)")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        array = array >= 0.5
    return array.astype(np.int16, copy=False)


def as_spacing(spacing, size: int) -> tuple[float, ...]:
    """``size`` positive voxel sizes in mm (all 1 when ``spacing`` is None)."""
    if spacing is None:
        return (1.0,) * size
    values = tuple(float(value) for value in np.ravel(to_numpy(spacing)))
    if len(values) != size or not all(np.isfinite(values)) or min(values) <= 0:
        raise data_error(None, f"spacing {spacing!r} is not {size} positive sizes in mm",
                        f"pass spacing as {size} numbers in x, y, z order, e.g. (0.6, 0.6, 3.6)")
    return values


def volume_inputs(image, label=None, pred=None, spacing=None):
    """``(volume (C, X, Y, Z) float32, label or None, pred or None, spacing)`` for a 3D view,
    from the arguments of :func:`~labkit.viz.slices.plot_slices` (arrays, a case dict or NIfTI
    paths); the spacing comes from the case or the file when None."""
    if isinstance(image, dict):
        image, label, pred, spacing = _from_case(image, label, pred, spacing)
    if is_path(image):
        image, file_spacing = load_nifti(image)
        spacing = file_spacing if spacing is None else spacing
    label = load_nifti(label)[0] if is_path(label) else label
    pred = load_nifti(pred)[0] if is_path(pred) else pred
    volume = as_volume(image)
    shape = volume.shape[1:]
    return (volume, as_mask(label, shape, "label"), as_mask(pred, shape, "pred"),
            as_spacing(spacing, 3))


def _from_case(case: dict, label, pred, spacing):
    if "image" not in case:
        raise data_error(case.get("id"), f"the case dict has no 'image' (keys: {sorted(case)})",
                        "pass a case with an 'image' entry, or the arrays themselves")
    meta = case.get("image_meta") or {}
    label = case.get("label") if label is None else label
    pred = case.get("pred") if pred is None else pred
    spacing = meta.get("spacing") if spacing is None else spacing
    return case["image"], label, pred, spacing
