"""Augmentation: deterministic transforms, random twins that draw their parameters, ``Shuffle``.

A random transform draws its parameters from the ``rng`` passed in (the batch iterator gives each
case its own), then calls its deterministic twin, so a seed replays an augmentation exactly:
``RandomFlip(["image"], axes=(0,)).draw(rng)`` is ``Flip(["image"], axes=(0,))`` or ``axes=()``.
"""

from __future__ import annotations

import numpy as np

from labkit.data.arrays import affine_in_plane
from labkit.data.wrappers import RandomTransform, Transform, key_tuple

__all__ = ["Affine", "Flip", "Intensity", "RandomAffine", "RandomFlip", "RandomIntensity", "Shuffle"]


class Flip(Transform):
    """Mirror the given spatial axes (0 = first spatial axis) of every key."""

    def __init__(self, keys, axes, spatial_dims: int = 3):
        self.keys, self.axes = key_tuple(keys), tuple(int(a) for a in axes)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, case):
        if not self.axes:
            return dict(case)
        return self._each(case, lambda array: np.flip(
            array, axis=tuple(array.ndim - self.spatial_dims + axis for axis in self.axes)).copy())


class Affine(Transform):
    """Rotate (in the plane of the first two spatial axes) and scale about the array centre
    (:func:`~labkit.data.arrays.affine_in_plane`), with one interpolation order per key."""

    def __init__(self, keys, orders, degrees: float = 0.0, scale: float = 1.0, spatial_dims: int = 3):
        self.keys = key_tuple(keys)
        self.orders = tuple(int(o) for o in orders)
        self.degrees = float(degrees)
        self.scale = float(scale)
        self.spatial_dims = int(spatial_dims)

    def matrix(self) -> np.ndarray:
        """Output voxel -> input voxel matrix (spatial dims only, about the centre)."""
        angle = np.deg2rad(self.degrees)
        matrix = np.eye(self.spatial_dims)
        matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        return matrix / self.scale

    def __call__(self, case):
        case, matrix = dict(case), self.matrix()
        for key, order in zip(self.keys, self.orders, strict=True):
            array = np.asarray(case[key], dtype=np.float32)
            if self.degrees != 0.0 or self.scale != 1.0:  # else the identity: nothing moves
                centre = (np.array(array.shape[array.ndim - self.spatial_dims:]) - 1) / 2
                array = affine_in_plane(array, matrix, centre - matrix @ centre, order)
            case[key] = array
        return case


class Intensity(Transform):
    """``image * scale + shift`` (channel-wide)."""

    def __init__(self, keys, scale: float = 1.0, shift: float = 0.0):
        self.keys, self.scale, self.shift = key_tuple(keys), float(scale), float(shift)

    def _apply(self, array):
        out = np.multiply(array, np.float32(self.scale), dtype=np.float32)
        out += np.float32(self.shift)
        return out

    def __call__(self, case):
        return self._each(case, self._apply)


class RandomFlip(RandomTransform):
    """Mirror each of ``axes`` with ``probability`` (the same draw for every key)."""

    def __init__(self, keys, axes=(0,), probability: float = 0.5, spatial_dims: int = 3):
        self.keys = key_tuple(keys)
        self.axes = tuple(int(a) for a in axes)
        self.probability = float(probability)
        self.spatial_dims = int(spatial_dims)

    def draw(self, rng):
        chosen = [axis for axis in self.axes if rng.random() < self.probability]
        return Flip(self.keys, chosen, self.spatial_dims)


class RandomAffine(RandomTransform):
    """Random in-plane rotation (+/- ``degrees``) and zoom (``scale`` range), with ``probability``."""

    def __init__(self, keys, orders, degrees: float = 10.0, scale=(0.9, 1.1),
                 probability: float = 0.5, spatial_dims: int = 3):
        self.keys = key_tuple(keys)
        self.orders = tuple(int(o) for o in orders)
        self.degrees = float(degrees)
        self.scale = tuple(float(s) for s in scale)
        self.probability = float(probability)
        self.spatial_dims = int(spatial_dims)

    def draw(self, rng):
        if rng.random() >= self.probability:
            return Affine(self.keys, self.orders, 0.0, 1.0, self.spatial_dims)
        return Affine(self.keys, self.orders, rng.uniform(-self.degrees, self.degrees),
                      rng.uniform(*self.scale), self.spatial_dims)


class RandomIntensity(RandomTransform):
    """Random contrast (``scale`` range) and brightness (``shift`` range)."""

    def __init__(self, keys, scale=(0.9, 1.1), shift=(-0.1, 0.1)):
        self.keys = key_tuple(keys)
        self.scale, self.shift = tuple(map(float, scale)), tuple(map(float, shift))

    def draw(self, rng):
        return Intensity(self.keys, rng.uniform(*self.scale), rng.uniform(*self.shift))


class Shuffle:
    """Per-epoch transform of the whole case list: a seeded permutation (no copies made)."""

    def __call__(self, cases: list, rng: np.random.Generator) -> list:
        return [cases[i] for i in rng.permutation(len(cases))]

    def __repr__(self) -> str:
        return "Shuffle()"
