"""Dict transforms: the ``Transform`` base, ``Compose``, and wrappers of ``labkit.data.arrays``.

A *case* is a dict ``{'id': 'prostate_00', 'image': <path or array>, 'label': ...}``; a transform
is a callable ``case -> new case`` (the input is never changed) whose stable ``repr`` is the disk
cache's key. Volumes carry ``<key>_meta`` = ``{path, affine, spacing, shape}`` (the file) plus
``grid_affine``, the voxel-to-world matrix of the array as it is now, updated by every transform
that moves voxels (``labkit.data.prostate.to_original_grid`` uses it).
"""

from __future__ import annotations

import numpy as np

from labkit.data import arrays
from labkit.data.errors import DataError

__all__ = ["Compose", "CropBlackBorder", "CropOrPad", "FuseMasks", "MapLabels",
           "NormalizeIntensity", "PadToMultiple", "RandomTransform", "Reorient", "Resample", "Resize",
           "Transform"]


class Transform:
    """Base class: a callable ``case -> new case`` whose ``repr`` lists its public attributes in a
    stable form (the cache key); transforms with the same settings are equal."""

    def __call__(self, case: dict) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = [f"{name}={_stable(value)}" for name, value in vars(self).items()
                    if not name.startswith("_")]
        return f"{type(self).__name__}({', '.join(settings)})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def _each(self, case: dict, function) -> dict:
        """A new case with ``function(array)`` in place of each of ``self.keys``."""
        return {**case, **{key: function(case[key]) for key in self.keys}}


class RandomTransform(Transform):
    """Base class of random transforms: ``draw(rng)`` parameters, then a deterministic twin."""

    def draw(self, rng: np.random.Generator) -> Transform:
        raise NotImplementedError

    def __call__(self, case: dict, rng: np.random.Generator | None = None) -> dict:
        if rng is None:  # a seed replays an augmentation: no hidden global generator
            raise ValueError(f"{type(self).__name__} needs a numpy Generator: call it as t(case, rng)")
        return self.draw(rng)(case)


class Compose(Transform):
    """Apply transforms in order; random ones get the ``rng`` passed to the call."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, case, rng: np.random.Generator | None = None):
        for transform in self.transforms:
            case = transform(case, rng) if isinstance(transform, (RandomTransform, Compose)) else transform(case)
        return case

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def _stable(value) -> str:
    """repr with tuples for lists and sorted dicts, so equal settings give equal keys."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_stable(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_stable(k)}: {_stable(value[k])}" for k in sorted(value, key=repr)) + "}"
    if isinstance(value, np.ndarray):
        return _stable(value.tolist())
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return repr(int(value))
    return repr(value)


def key_tuple(keys) -> tuple:
    """``'image'`` or ``['image', 'label']`` as a tuple of keys."""
    return (keys,) if isinstance(keys, str) else tuple(keys)


def source_of(case: dict, key: str) -> str:
    """The file a key came from (for error messages), else the case id."""
    meta = case.get(f"{key}_meta") or {}
    return meta.get("path") or str(case.get("id", "<case>"))


def _moved(case: dict, keys, move) -> dict:
    """A new case with ``case[key], grid = move(case[key], grid)`` for each key, the grid affine
    kept in ``<key>_meta``."""
    case = dict(case)
    for key in keys:
        meta = case.get(f"{key}_meta")
        if not meta:
            raise DataError(None, f"case {case.get('id')!r} has no '{key}_meta' (no affine)",
                            "load the volume with LoadNifti before moving voxels")
        case[key], affine = move(case[key], meta.get("grid_affine", meta["affine"]))
        case[f"{key}_meta"] = dict(meta, grid_affine=np.asarray(affine, dtype=float))
    return case


class Reorient(Transform):
    """Flip / permute volumes to RAS (:func:`~labkit.data.arrays.reorient_to_canonical`)."""

    def __init__(self, keys):
        self.keys = key_tuple(keys)

    def __call__(self, case):
        return _moved(case, self.keys, arrays.reorient_to_canonical)


class Resample(Transform):
    """Resample volumes to ``spacing`` mm (:func:`~labkit.data.arrays.resample`)."""

    def __init__(self, keys, spacing, order: int = 1):
        self.keys, self.spacing = key_tuple(keys), tuple(float(s) for s in spacing)
        self.order = int(order)

    def __call__(self, case):
        return _moved(case, self.keys, lambda array, grid: arrays.resample(array, grid, self.spacing, self.order))


class NormalizeIntensity(Transform):
    """Per-channel intensity normalisation (:func:`~labkit.data.arrays.normalize_intensity`)."""

    def __init__(self, keys, mode: str = "zscore", per_channel: bool = True):
        self.keys, self.mode, self.per_channel = key_tuple(keys), mode, per_channel

    def __call__(self, case):
        return self._each(case, lambda array: arrays.normalize_intensity(array, self.mode, self.per_channel))


class CropOrPad(Transform):
    """Centre-crop or zero-pad the trailing axes to ``size`` (:func:`~labkit.data.arrays.crop_or_pad`)."""

    def __init__(self, keys, size):
        self.keys, self.size = key_tuple(keys), tuple(int(n) for n in size)

    def _crop(self, array, grid):
        shift = np.eye(4)  # voxel 0 of the new grid is old voxel `start`
        shift[:3, 3] = arrays.crop_or_pad_start(array.shape[-3:], self.size)
        return arrays.crop_or_pad(array, self.size), grid @ shift

    def __call__(self, case):
        for key in self.keys:
            if f"{key}_meta" in case and len(self.size) == 3:  # a volume: its grid moves too
                case = _moved(case, [key], self._crop)
            else:
                case = {**case, key: arrays.crop_or_pad(case[key], self.size)}
        return case


class PadToMultiple(Transform):
    """Zero-pad (centred) the trailing ``spatial_dims`` axes up to a multiple of ``multiple``."""

    def __init__(self, keys, multiple: int, spatial_dims: int = 3):
        self.keys, self.multiple = key_tuple(keys), int(multiple)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, case):
        for key in self.keys:
            spatial = case[key].shape[-self.spatial_dims:]
            case = CropOrPad(key, tuple(-(-n // self.multiple) * self.multiple for n in spatial))(case)
        return dict(case)


class MapLabels(Transform):
    """Map label values ({old: new}); a value missing from the mapping is a DataError."""

    def __init__(self, key: str, mapping: dict):
        self.key, self.mapping = key, {int(k): int(v) for k, v in mapping.items()}

    def __call__(self, case):
        label = np.asarray(case[self.key])
        try:  # values like 0.9999 (scaled storage) are rounded, then judged
            mapped = arrays.map_labels(label if label.dtype.kind in "iub" else np.rint(label), self.mapping)
        except ValueError as error:
            raise DataError(source_of(case, self.key), f"unexpected label values: {error}",
                            f"labels must use only {sorted(self.mapping)}; check this is a "
                            "label file of this data set") from None
        return {**case, self.key: mapped}


class FuseMasks(Transform):
    """``out`` = union of two masks (:func:`~labkit.data.arrays.fuse_masks`), which are removed."""

    def __init__(self, left: str, right: str, out: str = "label"):
        self.left, self.right, self.out = left, right, out

    def __call__(self, case):
        case = dict(case)
        case[self.out] = arrays.fuse_masks(case.pop(self.left), case.pop(self.right))
        case[f"{self.out}_meta"] = {"path": f"{source_of(case, self.left)} + {source_of(case, self.right)}"}
        return case


class CropBlackBorder(Transform):
    """Cut black padding off ``image_key`` and the same rows / columns off ``other_keys``."""

    def __init__(self, image_key: str, other_keys=(), threshold: float = 0.0):
        self.image_key, self.other_keys = image_key, key_tuple(other_keys)
        self.threshold = float(threshold)

    def __call__(self, case):
        box = arrays.black_border_box(case[self.image_key], self.threshold)
        if box is None:
            raise DataError(source_of(case, self.image_key), "the image is entirely black",
                            "remove this case or replace the file")
        return {**case, **{key: case[key][box] for key in (self.image_key,) + self.other_keys}}


class Resize(Transform):
    """Resize keys to ``size`` with one interpolation order per key (1 image, 0 label)."""

    def __init__(self, keys, size, orders=None):
        self.keys = key_tuple(keys)
        self.size = tuple(int(n) for n in size)
        self.orders = tuple(int(o) for o in (orders if orders is not None else [1] * len(self.keys)))
        if len(self.orders) != len(self.keys):
            raise ValueError(f"Resize: {len(self.keys)} keys but {len(self.orders)} orders")

    def __call__(self, case):
        orders = dict(zip(self.keys, self.orders, strict=True))
        return {**case, **{key: arrays.resize(case[key], self.size, orders[key]) for key in self.keys}}
