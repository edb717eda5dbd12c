"""Dict transforms: the ``Transform`` base, ``Compose``, and thin wrappers of the array functions.

A *case* is a dict: ``{'id': 'prostate_00', 'image': <path or array>, 'label': ...}``. Each dict
transform is a callable ``case -> case`` that returns a new dict (the input is never changed)
and has a stable ``repr``, which the disk cache uses as its key. The arithmetic lives in
``labkit.data.arrays``; a wrapper applies it key by key.

Volumes carry ``<key>_meta`` = ``{path, affine, spacing, shape}`` (the file on disk) plus
``grid_affine``: the voxel-to-world matrix of the array as it is *now*, updated by every
transform that moves voxels, so a prediction can be put back on the original grid
(``labkit.data.prostate.to_original_grid``).
"""

from __future__ import annotations

import numpy as np

from labkit.data import arrays
from labkit.data.errors import DataError


class Transform:
    """Base class: a callable ``case -> new case`` with a stable ``repr`` (the cache key)."""

    def __call__(self, case: dict) -> dict:
        raise NotImplementedError

    def _settings(self) -> dict:
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={_stable(value)}" for name, value in self._settings().items())
        return f"{type(self).__name__}({settings})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class RandomTransform(Transform):
    """Base class of random transforms: ``draw(rng)`` parameters, then a deterministic twin."""

    def draw(self, rng: np.random.Generator) -> Transform:
        raise NotImplementedError

    def __call__(self, case: dict, rng: np.random.Generator | None = None) -> dict:
        if rng is None:
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


def _grid_affine(case: dict, key: str) -> np.ndarray:
    meta = case.get(f"{key}_meta")
    if not meta:
        raise DataError(None, f"case {case.get('id')!r} has no '{key}_meta' (no affine)",
                        "load the volume with LoadNifti before moving voxels")
    return meta.get("grid_affine", meta["affine"])


def _update_grid(case: dict, key: str, affine: np.ndarray) -> None:
    meta = case.get(f"{key}_meta")
    if meta is not None:
        case[f"{key}_meta"] = dict(meta, grid_affine=np.asarray(affine, dtype=float))


class Reorient(Transform):
    """Flip / permute volumes to RAS orientation (:func:`~labkit.data.arrays.reorient_to_canonical`)."""

    def __init__(self, keys):
        self.keys = key_tuple(keys)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key], affine = arrays.reorient_to_canonical(case[key], _grid_affine(case, key))
            _update_grid(case, key, affine)
        return case


class Resample(Transform):
    """Resample volumes to ``spacing`` mm (:func:`~labkit.data.arrays.resample`); order 1
    images, 0 labels."""

    def __init__(self, keys, spacing, order: int = 1):
        self.keys = key_tuple(keys)
        self.spacing = tuple(float(s) for s in spacing)
        self.order = int(order)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key], affine = arrays.resample(case[key], _grid_affine(case, key), self.spacing, self.order)
            _update_grid(case, key, affine)
        return case


class NormalizeIntensity(Transform):
    """Per-channel intensity normalisation (:func:`~labkit.data.arrays.normalize_intensity`)."""

    def __init__(self, keys, mode: str = "zscore", per_channel: bool = True):
        self.keys = key_tuple(keys)
        self.mode = mode
        self.per_channel = per_channel

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key] = arrays.normalize_intensity(case[key], self.mode, self.per_channel)
        return case


class CropOrPad(Transform):
    """Centre-crop or zero-pad the trailing axes to ``size`` (:func:`~labkit.data.arrays.crop_or_pad`)."""

    def __init__(self, keys, size):
        self.keys = key_tuple(keys)
        self.size = tuple(int(n) for n in size)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            if f"{key}_meta" in case and len(self.size) == 3:
                start = arrays.crop_or_pad_start(case[key].shape[-3:], self.size)
                shift = np.eye(4)
                shift[:3, 3] = start  # voxel 0 of the new grid is old voxel `start`
                _update_grid(case, key, _grid_affine(case, key) @ shift)
            case[key] = arrays.crop_or_pad(case[key], self.size)
        return case


class PadToMultiple(Transform):
    """Zero-pad (centred) the trailing ``spatial_dims`` axes up to a multiple of ``multiple``."""

    def __init__(self, keys, multiple: int, spatial_dims: int = 3):
        self.keys = key_tuple(keys)
        self.multiple = int(multiple)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, case):
        for key in self.keys:
            spatial = case[key].shape[-self.spatial_dims:]
            case = CropOrPad(key, tuple(-(-n // self.multiple) * self.multiple for n in spatial))(case)
        return dict(case)


class MapLabels(Transform):
    """Map label values ({old: new}); a value missing from the mapping is a DataError."""

    def __init__(self, key: str, mapping: dict):
        self.key = key
        self.mapping = {int(k): int(v) for k, v in mapping.items()}

    def __call__(self, case):
        case = dict(case)
        label = np.asarray(case[self.key])
        try:
            try:
                case[self.key] = arrays.map_labels(label, self.mapping)
            except ValueError:  # values like 0.9999 (scaled storage): round them, then judge
                case[self.key] = arrays.map_labels(np.rint(label), self.mapping)
        except ValueError as error:
            raise DataError(source_of(case, self.key), f"unexpected label values: {error}",
                            f"labels must use only {sorted(self.mapping)}; check this is a "
                            "label file of this data set") from None
        return case


class FuseMasks(Transform):
    """``out`` = union of two masks (:func:`~labkit.data.arrays.fuse_masks`); the two mask keys
    are removed."""

    def __init__(self, left: str, right: str, out: str = "label"):
        self.left = left
        self.right = right
        self.out = out

    def __call__(self, case):
        case = dict(case)
        case[self.out] = arrays.fuse_masks(case.pop(self.left), case.pop(self.right))
        case[f"{self.out}_meta"] = {"path": f"{source_of(case, self.left)} + {source_of(case, self.right)}"}
        return case


class CropBlackBorder(Transform):
    """Cut black padding off ``image_key`` and the same rows / columns off ``other_keys``."""

    def __init__(self, image_key: str, other_keys=(), threshold: float = 0.0):
        self.image_key = image_key
        self.other_keys = key_tuple(other_keys)
        self.threshold = float(threshold)

    def __call__(self, case):
        case = dict(case)
        box = arrays.black_border_box(case[self.image_key], self.threshold)
        if box is None:
            raise DataError(source_of(case, self.image_key), "the image is entirely black",
                            "remove this case or replace the file")
        for key in (self.image_key,) + self.other_keys:
            case[key] = case[key][box]
        return case


class Resize(Transform):
    """Resize keys to ``size`` with one interpolation order per key (1 image, 0 label)."""

    def __init__(self, keys, size, orders=None):
        self.keys = key_tuple(keys)
        self.size = tuple(int(n) for n in size)
        self.orders = tuple(int(o) for o in (orders if orders is not None else [1] * len(self.keys)))
        if len(self.orders) != len(self.keys):
            raise ValueError(f"Resize: {len(self.keys)} keys but {len(self.orders)} orders")

    def __call__(self, case):
        case = dict(case)
        for key, order in zip(self.keys, self.orders, strict=True):
            case[key] = arrays.resize(case[key], self.size, order)
        return case
