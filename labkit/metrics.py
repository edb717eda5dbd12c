"""Segmentation metrics on binary masks (numpy / scipy only): ``dice``, ``hausdorff95`` and
``mean_surface_distance``.

Distances come from Euclidean distance transforms that take the voxel ``spacing`` into
account, so an anisotropic MRI grid gives millimetres, not voxels. A surface voxel is a
foreground voxel with at least one background neighbour (6-connectivity in 3D).

Empty masks: both empty -> Dice 1.0 and distances 0.0 (nothing to find, nothing found);
one empty -> Dice 0.0 and distances ``inf`` (no surface to measure against).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _binary(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        mask = mask > 0.5
    if mask.ndim == 0:
        raise ValueError(f"{name} must be an array (2D or 3D mask), got a scalar")
    return mask


def _pair(pred, truth):
    pred, truth = _binary(pred, "pred"), _binary(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def dice(pred, truth) -> float:
    """Dice overlap 2|P ∩ T| / (|P| + |T|) of two binary masks (values > 0.5 count as foreground).

    Example:
        >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
        0.6666666666666666
    """
    pred, truth = _pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & truth).sum()) / total


def _spacing(spacing, ndim: int) -> tuple:
    spacing = (1.0,) * ndim if spacing is None else tuple(float(s) for s in np.ravel(spacing))
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred, truth, spacing=None) -> np.ndarray:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    Returns the pooled distances of both directions; empty when both masks are empty.
    Raises ValueError when exactly one mask is empty.
    """
    pred, truth = _pair(pred, truth)
    spacing = _spacing(spacing, pred.ndim)
    if not pred.any() and not truth.any():
        return np.zeros(0)
    if not pred.any() or not truth.any():
        raise ValueError("one mask is empty: surface distances are undefined")
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return np.concatenate([to_truth[pred_surface], to_pred[truth_surface]])


def _distance_summary(pred, truth, spacing, summary) -> float:
    pred, truth = _pair(pred, truth)
    if pred.any() != truth.any():
        return float("inf")
    distances = surface_distances(pred, truth, spacing)
    return float(summary(distances)) if distances.size else 0.0


def hausdorff95(pred, truth, spacing=None) -> float:
    """95th percentile of the surface distances of both directions, in mm: robust to a few stray
    voxels, unlike the plain Hausdorff distance (see the module notes on empty masks)."""
    return _distance_summary(pred, truth, spacing, lambda d: np.percentile(d, 95))


def mean_surface_distance(pred, truth, spacing=None) -> float:
    """Mean of the surface distances of both directions, in mm (see the module notes on empty masks)."""
    return _distance_summary(pred, truth, spacing, np.mean)
