"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labkit.metrics import dice, hausdorff95, mean_surface_distance, surface_distances


def test_dice_by_hand():
    pred = np.array([1, 1, 1, 1, 0, 0])
    truth = np.array([0, 0, 1, 1, 1, 0])
    assert dice(pred, truth) == pytest.approx(2 * 2 / (4 + 3))
    assert dice(truth, truth) == 1.0
    assert dice(pred, 1 - pred) == 0.0
    assert dice(np.array([0.2, 0.9]), np.array([0, 1])) == 1.0  # probabilities: > 0.5 counts


def test_empty_masks_have_defined_results():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert dice(empty, empty) == 1.0 and dice(empty, full) == 0.0
    assert hausdorff95(empty, empty) == 0.0 and mean_surface_distance(empty, empty) == 0.0
    assert math.isinf(hausdorff95(full, empty)) and math.isinf(mean_surface_distance(empty, full))
    with pytest.raises(ValueError, match="empty"):
        surface_distances(empty, full)


def test_shifted_line_distances_use_spacing():
    """Truth: a vertical line; pred: the same line two columns to the right.

    Every surface voxel is 2 columns from the other line; columns are 0.5 mm apart -> 1.0 mm.
    """
    truth = np.zeros((8, 8), bool)
    truth[2:5, 3] = True
    pred = np.zeros_like(truth)
    pred[2:5, 5] = True
    assert hausdorff95(pred, truth, spacing=(1.0, 0.5)) == pytest.approx(1.0)
    assert mean_surface_distance(pred, truth, spacing=(1.0, 0.5)) == pytest.approx(1.0)
    assert hausdorff95(pred, truth, spacing=(1.0, 2.0)) == pytest.approx(4.0)


def test_one_stray_voxel():
    """Pooled distances are [0 (pred at truth), 4 (stray), 0 (truth to pred)]."""
    truth = np.zeros((3, 7), bool)
    truth[0, 0] = True
    pred = truth.copy()
    pred[0, 4] = True
    assert mean_surface_distance(pred, truth) == pytest.approx(4 / 3)
    assert hausdorff95(pred, truth) == pytest.approx(np.percentile([0, 0, 4], 95))  # 3.6
    assert hausdorff95(pred, truth) == pytest.approx(3.6)


def test_3d_cubes_anisotropic():
    """A 3x3x3 cube against the same cube one slice higher, slices 3 mm apart, 0.5 mm in-plane.

    Each cube has 26 surface voxels (all but its centre). Pred -> truth: its far face (9
    voxels) is 3 mm from truth's top face; the centre of its near face lies inside truth, one
    0.5 mm step from truth's surface; the other 16 lie on truth's surface. Truth -> pred is
    the mirror image. Pooled: 18 x 3 mm, 2 x 0.5 mm, 32 x 0.
    """
    truth = np.zeros((7, 7, 7), bool)
    truth[2:5, 2:5, 2:5] = True
    pred = np.roll(truth, 1, axis=2)
    spacing = (0.5, 0.5, 3.0)
    distances = surface_distances(pred, truth, spacing)
    assert distances.size == 52
    assert np.count_nonzero(np.isclose(distances, 3.0)) == 18
    assert np.count_nonzero(np.isclose(distances, 0.5)) == 2
    assert np.count_nonzero(distances == 0) == 32
    assert hausdorff95(pred, truth, spacing) == pytest.approx(3.0)
    assert mean_surface_distance(pred, truth, spacing) == pytest.approx((18 * 3.0 + 2 * 0.5) / 52)
    assert dice(pred, truth) == pytest.approx(2 * 18 / 54)


def test_identical_masks_have_zero_distance():
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 2:4, 1:6] = True
    assert hausdorff95(mask, mask, (1, 1, 1)) == 0.0 and mean_surface_distance(mask, mask) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1, 1, 1))
