"""Transforms: plain array functions, then thin dictionary wrappers that chain.

A *case* is a dict: ``{'id': 'prostate_00', 'image': <path or array>, 'label': ...}``. Each dict
transform is a callable ``case -> case`` that returns a new dict (the input is never changed)
and has a stable ``repr``, which the disk cache uses as its key. A chain is a plain list::

    chain = [LoadNifti(["image", "label"]), Reorient(["image", "label"]),
             Resample(["image"], spacing=(1, 1, 1), order=1), ...]
    case = Compose(chain)(case)

The arithmetic lives in plain numpy functions (``resample``, ``crop_or_pad``, ...) that the
wrappers call key by key, so each function can be read and tested on its own.

Array layout: 3D volumes are channels-first ``(C, X, Y, Z)``; 2D images ``(H, W)``. Spatial
functions act on the trailing axes. Volumes carry ``<key>_meta`` = ``{path, affine, spacing,
shape}`` (the file on disk) plus ``grid_affine``: the voxel-to-world matrix of the array as it
is *now*, updated by every transform that moves voxels, so a prediction can be put back on the
original grid (``labkit.data.prostate.to_original_grid``).

Random transforms draw their parameters from the ``rng`` passed in, then call a deterministic
twin (``RandomFlip`` -> ``Flip``), so a seed replays an augmentation exactly.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from scipy import ndimage

from labkit.data.errors import DataError

# Largest volume (after conversion to float32) that LoadNifti reads, in MB.
MAX_VOLUME_MB = float(os.environ.get("LABKIT_MAX_VOLUME_MB", 2048))
JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


class DataWarning(UserWarning):
    """Input was repaired (for example NaN voxels replaced); the message names the file."""


def is_junk(name: str) -> bool:
    """True for macOS / Windows litter: ``._*`` resource forks, ``.DS_Store``, ``__MACOSX``."""
    return name.startswith("._") or name in JUNK_NAMES or name == "__MACOSX"


# ----------------------------------------------------------------------------------------------
# Array functions (plain numpy)
# ----------------------------------------------------------------------------------------------


def reorient_to_canonical(array: np.ndarray, affine: np.ndarray):
    """Flip / permute the last three axes so they point Right, Anterior, Superior (RAS).

    Only whole-voxel moves: no interpolation. An oblique affine keeps its small rotation
    (the closest axes are chosen); :func:`resample` removes it. The result is a view of the
    input (flipped axes have negative strides): wrap it in ``np.ascontiguousarray`` before
    ``torch.from_numpy``. Later transforms (resample, crop) return ordinary arrays.

    Returns:
        (array, affine) on the reoriented grid.
    """
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt("RAS"))
    spatial_shape = array.shape[-3:]
    channels_last = np.moveaxis(array, tuple(range(array.ndim - 3)), tuple(range(3, array.ndim)))
    moved = nib.orientations.apply_orientation(channels_last, transform)
    array = np.moveaxis(moved, tuple(range(3, array.ndim)), tuple(range(array.ndim - 3)))
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, spatial_shape)
    return array, new_affine  # views: flips and axis swaps copy nothing


def resampled_grid(shape, affine: np.ndarray, spacing):
    """The grid :func:`resample` maps onto: axes along x/y/z with ``spacing`` mm, covering the
    whole input (nilearn's ``resample_img(target_affine=np.diag(spacing))`` rule).

    Returns:
        (target_shape, target_affine).
    """
    target = np.eye(4)
    target[:3, :3] = np.diag(np.asarray(spacing, dtype=float))
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    in_target = np.linalg.inv(target) @ affine @ np.vstack([corners, np.ones(corners.shape[1])])
    low, high = in_target[:3].min(axis=1), in_target[:3].max(axis=1)
    target[:3, 3] = target[:3, :3] @ low
    target_shape = tuple(int(np.ceil(extent)) + 1 for extent in high - low)
    return target_shape, target


def resample(array: np.ndarray, affine: np.ndarray, spacing, order: int = 1):
    """Resample the last three axes onto an axis-aligned grid of ``spacing`` mm.

    Args:
        array: ``(X, Y, Z)`` or ``(C, X, Y, Z)``.
        affine: voxel-to-world matrix of ``array``.
        spacing: target voxel size in mm (x, y, z).
        order: 1 (linear) for images, 0 (nearest neighbour) for labels.

    Returns:
        (array, affine) on the new grid; float32.
    """
    target_shape, target_affine = resampled_grid(array.shape[-3:], affine, spacing)
    matrix = np.linalg.inv(affine) @ target_affine  # target voxel -> source voxel
    flat = array.reshape((-1,) + array.shape[-3:]).astype(np.float32, copy=False)
    if _is_diagonal(matrix[:3, :3]):
        # Axis-aligned (every case after Reorient, unless oblique): interpolation separates
        # into one 1D pass per axis, several times faster than the general 3D sampler and
        # identical to it (tests/test_data_transforms.py compares them).
        out = np.stack([_separable_resample(volume, matrix, target_shape, order) for volume in flat])
    else:
        out = np.stack([ndimage.affine_transform(volume, matrix[:3, :3], offset=matrix[:3, 3],
                                                 output_shape=target_shape, order=order, cval=0.0)
                        for volume in flat])
    return out.reshape(array.shape[:-3] + target_shape), target_affine


def _is_diagonal(matrix: np.ndarray, tolerance: float = 1e-9) -> bool:
    off_diagonal = matrix - np.diag(np.diag(matrix))
    return bool(np.abs(off_diagonal).max() <= tolerance * np.abs(np.diag(matrix)).max())


def _separable_resample(volume: np.ndarray, matrix: np.ndarray, output_shape, order: int) -> np.ndarray:
    """``ndimage.affine_transform(order=0 or 1, mode='constant', cval=0)`` for a diagonal matrix."""
    # Work in memory order (outermost axis first), whatever flips and axis swaps Reorient left
    # in the view, and run the passes that shrink the volume most first: the later, costlier
    # passes then touch fewer voxels. 3-4x faster than the plain x, y, z order on a file's view.
    memory_order = np.argsort([-abs(stride) for stride in volume.strides], kind="stable")
    out = volume.transpose(memory_order)
    shrink = [output_shape[axis] / max(volume.shape[axis], 1) for axis in memory_order]
    for position in sorted(range(3), key=lambda p: shrink[p]):
        axis = memory_order[position]
        out = _resample_axis(out, position, matrix[axis, axis], matrix[axis, 3], output_shape[axis], order)
    return out.transpose(np.argsort(memory_order))


def _resample_axis(volume: np.ndarray, axis: int, scale: float, offset: float, size: int,
                   order: int) -> np.ndarray:
    """Sample ``volume`` along one axis at ``scale * i + offset``; 0 outside ``[0, n - 1]``."""
    n = volume.shape[axis]
    coords = scale * np.arange(size) + offset
    along = [1] * volume.ndim
    along[axis] = size
    if order == 0:
        index = np.clip(np.floor(coords + 0.5).astype(np.int64), 0, n - 1)
        out = np.take(volume, index, axis=axis)
    else:
        low = np.clip(np.floor(coords).astype(np.int64), 0, max(n - 2, 0))
        weight = (coords - low).astype(np.float32).reshape(along)
        out = np.take(volume, low, axis=axis) * (1 - weight)
        if n > 1:
            out += np.take(volume, low + 1, axis=axis) * weight
    inside = (coords >= 0) & (coords <= n - 1)
    if not inside.all():
        out *= inside.reshape(along)
    return out


def normalize_intensity(array: np.ndarray, mode: str = "zscore", per_channel: bool = True,
                        percentiles=(0.5, 99.5)) -> np.ndarray:
    """Scale intensities, channel by channel (first axis) when ``per_channel``.

    ``zscore``: zero mean, unit standard deviation. ``minmax``: the given percentiles go to
    0 and 1, clipped. A constant channel becomes all zeros (no division by zero).
    """
    array = np.asarray(array, dtype=np.float32)
    if per_channel and array.ndim > 2:
        return np.stack([normalize_intensity(channel, mode, False, percentiles) for channel in array])
    if mode == "zscore":
        spread = float(array.std())
        return ((array - array.mean()) / spread if spread > 1e-6 else np.zeros_like(array)).astype(np.float32)
    if mode == "minmax":
        low, high = np.percentile(array, percentiles)
        if high - low <= 1e-6:
            return np.zeros_like(array)
        return np.clip((array - low) / (high - low), 0, 1).astype(np.float32)
    raise ValueError(f"unknown normalisation mode {mode!r}: use 'zscore' or 'minmax'")


def crop_or_pad_start(shape, size) -> tuple:
    """Index in the old array of the new array's first voxel, per axis (negative: padding)."""
    return tuple((old - new) // 2 for old, new in zip(shape, size, strict=True))


def crop_or_pad(array: np.ndarray, size) -> np.ndarray:
    """Centre-crop or zero-pad the last ``len(size)`` axes to ``size``."""
    size = tuple(int(n) for n in size)
    leading = array.ndim - len(size)
    starts = crop_or_pad_start(array.shape[leading:], size)
    out = np.zeros(array.shape[:leading] + size, dtype=array.dtype)
    source, target = [slice(None)] * leading, [slice(None)] * leading
    for start, old, new in zip(starts, array.shape[leading:], size, strict=True):
        count = min(old - max(start, 0), new - max(-start, 0))  # voxels both grids share
        source.append(slice(max(start, 0), max(start, 0) + count))
        target.append(slice(max(-start, 0), max(-start, 0) + count))
    out[tuple(target)] = array[tuple(source)]  # one allocation, one copy (no pad-then-slice)
    return out


def black_border_box(image: np.ndarray, threshold: float = 0.0):
    """Rows and columns (as slices) that remain after removing all-black outer rows / columns."""
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def crop_black_border(image: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Remove black padding (rows / columns whose every pixel is <= ``threshold``) of a 2D image."""
    box = black_border_box(image, threshold)
    return image if box is None else image[box]


def resize(array: np.ndarray, size, order: int = 1) -> np.ndarray:
    """Resize the last ``len(size)`` axes to ``size`` (smoothing first when shrinking an image).

    ``order`` 1 for images, 0 for labels (nearest neighbour keeps label values).
    """
    size = tuple(int(n) for n in size)
    leading = array.ndim - len(size)
    factors = [1.0] * leading + [new / old for new, old in zip(size, array.shape[leading:], strict=True)]
    array = np.asarray(array, dtype=np.float32)
    if order > 0 and min(factors) < 1:
        sigma = [max(0.0, (1 / factor - 1) / 2) for factor in factors]
        array = ndimage.gaussian_filter(array, sigma)
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    return out


def fuse_masks(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One binary label (float32 0/1) from two masks: a pixel is lung if either mask says so."""
    return ((np.asarray(left) > 0.5) | (np.asarray(right) > 0.5)).astype(np.float32)


def map_labels(label: np.ndarray, mapping: dict) -> np.ndarray:
    """Replace label values through ``mapping`` ({old: new}); float32 out.

    Raises:
        ValueError: a value in ``label`` has no entry in ``mapping``.
    """
    label = np.asarray(label)
    small_integers = label.size and all(float(key).is_integer() and 0 <= key < 256 for key in mapping)
    bounds = (label.min(), label.max()) if small_integers else None  # one pass each, once
    if bounds is not None and bounds[0] >= 0 and bounds[1] < 256:
        low, high = int(bounds[0]), int(bounds[1])
        codes = label.astype(np.uint8)  # keeps the array's memory order: no transposing copy
        if label.dtype.kind in "ub" or np.array_equal(codes, label):
            # Whole numbers in [0, 255]: no sort (np.unique sorts every voxel). When the mapping
            # covers every integer from the smallest value to the largest, no value can be
            # unknown; otherwise one counting pass finds the values present.
            if not all(value in mapping for value in range(low, high + 1)):
                present = np.flatnonzero(np.bincount(codes.ravel(order="K"), minlength=256))
                unknown = [int(v) for v in present if v not in mapping]
                if unknown:
                    raise ValueError(f"label values {unknown[:5]} are not in {sorted(mapping)}")
            small_out = all(float(new).is_integer() and 0 <= new < 256 for new in mapping.values())
            out = codes if small_out else codes.astype(np.float32)
            for old, new in mapping.items():
                if new != old and low <= old <= high:  # np.where: putmask is 10x slower here
                    out = np.where(codes == int(old), out.dtype.type(new), out)
            return out.astype(np.float32)  # the one full-size float allocation
    values = np.unique(label)
    unknown = [v for v in values.tolist() if v not in mapping]
    if unknown:
        raise ValueError(f"label values {unknown[:5]} are not in {sorted(mapping)}")
    out = np.zeros(label.shape, np.float32)
    for old, new in mapping.items():
        out[label == old] = new
    return out


# ----------------------------------------------------------------------------------------------
# Dictionary transforms
# ----------------------------------------------------------------------------------------------


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


def _keys(keys) -> tuple:
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _source(case: dict, key: str) -> str:
    """The file a key came from (for error messages)."""
    meta = case.get(f"{key}_meta") or {}
    return meta.get("path") or str(case.get("id", "<case>"))


def _update_grid(case: dict, key: str, affine: np.ndarray) -> None:
    meta = case.get(f"{key}_meta")
    if meta is not None:
        case[f"{key}_meta"] = dict(meta, grid_affine=np.asarray(affine, dtype=float))


def _grid_affine(case: dict, key: str) -> np.ndarray:
    meta = case.get(f"{key}_meta")
    if not meta:
        raise DataError(None, f"case {case.get('id')!r} has no '{key}_meta' (no affine)",
                        "load the volume with LoadNifti before moving voxels")
    return meta.get("grid_affine", meta["affine"])


def _shift_affine(affine: np.ndarray, start) -> np.ndarray:
    """Affine of a sub-grid whose voxel 0 is old voxel ``start``."""
    shift = np.eye(4)
    shift[:3, 3] = start
    return affine @ shift


class LoadNifti(Transform):
    """Read NIfTI files into channels-first float32 arrays ``(C, X, Y, Z)``.

    Keys in ``integer_keys`` (label maps) keep the file's integer type when the file stores
    integers without scaling: :class:`MapLabels` then maps them without first converting every
    voxel to float32 (it returns float32). Stores ``<key>_meta`` = {path, affine, spacing, shape,
    grid_affine}. Non-finite voxels
    (NaN, Inf) are replaced by 0 with a :class:`DataWarning` naming the file: the rest of the
    scan is still usable. Volumes must share one grid (same shape and affine).

    Args:
        keys: case keys holding paths.
        channels: optional {key: expected channel count}; 1 means a 3D file.
        max_mb: refuse volumes larger than this (as float32) with a clear error.
        integer_keys: keys whose integer voxels stay integers (see above).
    """

    def __init__(self, keys, channels: dict | None = None, max_mb: float | None = None, integer_keys=()):
        self.keys = _keys(keys)
        self.channels = dict(channels or {})
        self.integer_keys = _keys(integer_keys)
        self._max_mb = MAX_VOLUME_MB if max_mb is None else float(max_mb)  # not in repr: same output

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            path = os.fspath(case[key])
            array, affine = _read_nifti(path, self.channels.get(key), self._max_mb,
                                        keep_integers=key in self.integer_keys)
            case[key] = array
            case[f"{key}_meta"] = {"path": path, "affine": affine, "shape": tuple(array.shape[1:]),
                                   "spacing": tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
                                   "grid_affine": affine}
        _check_same_grid(case, self.keys)
        return case


def _read_nifti(path: str, channels: int | None, max_mb: float, keep_integers: bool = False):
    """(float32 array (C, X, Y, Z), affine) of one file, with every failure as a DataError;
    ``keep_integers``: unscaled integer voxels keep their type."""
    import nibabel as nib

    if not os.path.isfile(path):
        raise DataError(path, "file not found", "check the path or run `make data` / the fetch script")
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types for non-NIfTI input
        raise DataError(path, f"not a readable NIfTI file ({type(error).__name__}: {error})",
                        "replace it with a valid .nii or .nii.gz (download it again)") from None
    shape = tuple(int(n) for n in image.shape)
    _check_dimensions(path, shape, channels)
    size_mb = 4 * float(np.prod(shape)) / 2**20
    if size_mb > max_mb:
        raise DataError(path, f"volume of shape {shape} needs {size_mb:.0f} MB as float32, more "
                        f"than the {max_mb:.0f} MB budget",
                        "crop or downsample it first, or raise LABKIT_MAX_VOLUME_MB if memory allows")
    try:
        array = _voxels(path, image, keep_integers)
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise DataError(path, f"the file is damaged or truncated ({type(error).__name__}: {error})",
                        "download or generate it again (`make data` rebuilds synthetic sets)") from None
    if _may_hold_non_finite(image) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        warnings.warn(f"{path}: {bad} NaN/Inf voxels replaced by 0", DataWarning, stacklevel=4)
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    # Channels first. The voxels stay in the file's (Fortran) order: each channel is one
    # contiguous block, and no transposing copy is made here.
    array = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)
    return array, np.asarray(image.affine, dtype=float)


def _voxels(path: str, image, keep_integers: bool = False) -> np.ndarray:
    """The voxels of ``image`` (opened lazily by nibabel from ``path``) as float32 (or, with
    ``keep_integers``, in the file's integer type when it stores integers without scaling).

    Single-file NIfTI (``.nii``, ``.nii.gz``): the whole file is read and decompressed in one
    call (ISA-L's gzip when the ``isal`` package is installed, about 2x faster than zlib) and
    the voxels are viewed in place, then cast once. This is 2-3x faster than nibabel's
    streaming reader. Anything else goes through nibabel.
    """
    proxy = image.dataobj
    offset, dtype = getattr(proxy, "offset", None), image.get_data_dtype()
    if offset is None or not path.endswith((".nii", ".nii.gz")) or dtype.hasobject:
        return np.asarray(proxy, dtype=np.float32)
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data)
    count = int(np.prod(image.shape))
    if len(data) < int(offset) + count * dtype.itemsize:
        raise EOFError(f"{len(data)} bytes of voxel data, the header asks for "
                       f"{int(offset) + count * dtype.itemsize}")
    voxels = np.frombuffer(data, dtype=dtype, count=count, offset=int(offset))
    slope, intercept = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    unscaled = slope in (None, 1.0) and intercept in (None, 0.0)
    if keep_integers and dtype.kind in "iub" and unscaled:
        return voxels.reshape(image.shape, order="F").astype(dtype.newbyteorder("="))  # writable, F layout
    array = voxels.reshape(image.shape, order="F").astype(np.float32)  # keeps the F layout
    if slope is not None and np.isfinite(slope) and slope not in (0.0, 1.0):
        array *= np.float32(slope)
    if intercept is not None and np.isfinite(intercept) and intercept != 0.0:
        array += np.float32(intercept)
    return array


def _gunzip(data: bytes) -> bytes:
    try:
        from isal import igzip
    except ImportError:  # optional speed-up: fall back to the standard library
        import gzip as igzip
    return igzip.decompress(data)


def _may_hold_non_finite(image) -> bool:
    """False for integer voxels with finite (or no) scaling: they cannot be NaN or Inf."""
    if image.get_data_dtype().kind not in "iub":
        return True
    scaling = [getattr(image.dataobj, name, None) for name in ("slope", "inter")]
    return not all(value is None or np.isfinite(value) for value in scaling)


def _check_dimensions(path: str, shape: tuple, channels: int | None) -> None:
    if len(shape) not in (3, 4):
        raise DataError(path, f"expected a 3D or 4D volume, found shape {shape}",
                        "use a volume (x, y, z) or a multi-channel volume (x, y, z, channels)")
    found = 1 if len(shape) == 3 else shape[3]
    if channels is None or found == channels:
        return
    if channels == 1:
        raise DataError(path, f"expected a 3D volume (one channel), found shape {shape}",
                        "labels are 3D: check that image and label files were not swapped")
    raise DataError(path, f"expected a 4D volume with {channels} channels, found shape {shape}",
                    f"use the multi-channel file (x, y, z, {channels}); check that image and "
                    "label files were not swapped")


def _check_same_grid(case: dict, keys) -> None:
    first = keys[0]
    reference = case[f"{first}_meta"]
    for key in keys[1:]:
        meta = case[f"{key}_meta"]
        if meta["shape"] != reference["shape"]:
            raise DataError(meta["path"], f"grid {meta['shape']} differs from the image's "
                            f"{reference['shape']} ({reference['path']})",
                            "use the label made for this image (same case number)")
        tolerance = 0.05 * min(reference["spacing"])  # header rounding, not a different grid
        if not np.allclose(meta["affine"], reference["affine"], atol=tolerance):
            raise DataError(meta["path"], "affine (position / orientation) differs from the image's "
                            f"({reference['path']})",
                            "use the label made for this image, or resample it onto the image grid")


class Reorient(Transform):
    """Flip / permute volumes to RAS orientation (:func:`reorient_to_canonical`)."""

    def __init__(self, keys):
        self.keys = _keys(keys)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key], affine = reorient_to_canonical(case[key], _grid_affine(case, key))
            _update_grid(case, key, affine)
        return case


class Resample(Transform):
    """Resample volumes to ``spacing`` mm (:func:`resample`); order 1 images, 0 labels."""

    def __init__(self, keys, spacing, order: int = 1):
        self.keys = _keys(keys)
        self.spacing = tuple(float(s) for s in spacing)
        self.order = int(order)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key], affine = resample(case[key], _grid_affine(case, key), self.spacing, self.order)
            _update_grid(case, key, affine)
        return case


class NormalizeIntensity(Transform):
    """Per-channel intensity normalisation (:func:`normalize_intensity`)."""

    def __init__(self, keys, mode: str = "zscore", per_channel: bool = True):
        self.keys = _keys(keys)
        self.mode = mode
        self.per_channel = per_channel

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            case[key] = normalize_intensity(case[key], self.mode, self.per_channel)
        return case


class CropOrPad(Transform):
    """Centre-crop or zero-pad the trailing axes to ``size`` (:func:`crop_or_pad`)."""

    def __init__(self, keys, size):
        self.keys = _keys(keys)
        self.size = tuple(int(n) for n in size)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            spatial = case[key].shape[-len(self.size):]
            if f"{key}_meta" in case and len(self.size) == 3:
                start = crop_or_pad_start(spatial, self.size)
                _update_grid(case, key, _shift_affine(_grid_affine(case, key), start))
            case[key] = crop_or_pad(case[key], self.size)
        return case


class PadToMultiple(Transform):
    """Zero-pad (centred) the trailing ``spatial_dims`` axes up to a multiple of ``multiple``."""

    def __init__(self, keys, multiple: int, spatial_dims: int = 3):
        self.keys = _keys(keys)
        self.multiple = int(multiple)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            spatial = case[key].shape[-self.spatial_dims:]
            size = tuple(-(-n // self.multiple) * self.multiple for n in spatial)
            case = CropOrPad(key, size)(case)
        return case


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
                case[self.key] = map_labels(label, self.mapping)
            except ValueError:  # values like 0.9999 (scaled storage): round them, then judge
                case[self.key] = map_labels(np.rint(label), self.mapping)
        except ValueError as error:
            raise DataError(_source(case, self.key), f"unexpected label values: {error}",
                            f"labels must use only {sorted(self.mapping)}; check this is a "
                            "label file of this data set") from None
        return case


class LoadPNG(Transform):
    """Read PNGs as 2D float32 arrays in [0, 1].

    RGB / RGBA become grayscale (alpha dropped); 8-bit is divided by 255, 16-bit by 4095 when
    the values fit in 12 bits (X-ray detectors) else by 65535. All keys must have one size.
    Stores ``<key>_meta`` = {path, shape}.
    """

    def __init__(self, keys):
        self.keys = _keys(keys)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            path = os.fspath(case[key])
            case[key] = read_png(path)
            case[f"{key}_meta"] = {"path": path, "shape": case[key].shape}
        reference = self.keys[0]
        for key in self.keys[1:]:
            if case[key].shape != case[reference].shape:
                raise DataError(_source(case, key), f"size {case[key].shape} differs from the "
                                f"image's {case[reference].shape} ({_source(case, reference)})",
                                "use the mask made for this image (same file name)")
        return case


def read_png(path: str) -> np.ndarray:
    """One PNG as a float32 (H, W) array in [0, 1]; every failure is a DataError."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DataError(path, "file not found", "check the path or run `make data` / the fetch script")
    try:
        with Image.open(path) as image:
            image.load()
            array = _png_to_gray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(path, f"not a readable PNG image ({type(error).__name__}: {error})",
                        "replace it with a valid PNG (download or generate it again)") from None
    return array


def _png_to_gray(image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 4095.0 if array.max() <= 4095 else (65535.0 if array.max() <= 65535 else float(array.max()))
        return np.clip(array / scale, 0, 1)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        high = float(array.max())
        return array / high if high > 0 else array
    if "A" in image.mode or image.mode == "P":  # transparency / palette: drop alpha via RGB
        image = image.convert("RGBA").convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


class FuseMasks(Transform):
    """``out`` = union of two masks (:func:`fuse_masks`); the two mask keys are removed."""

    def __init__(self, left: str, right: str, out: str = "label"):
        self.left = left
        self.right = right
        self.out = out

    def __call__(self, case):
        case = dict(case)
        case[self.out] = fuse_masks(case.pop(self.left), case.pop(self.right))
        case[f"{self.out}_meta"] = {"path": f"{_source(case, self.left)} + {_source(case, self.right)}"}
        return case


class CropBlackBorder(Transform):
    """Cut black padding off ``image_key`` and the same rows / columns off ``other_keys``."""

    def __init__(self, image_key: str, other_keys=(), threshold: float = 0.0):
        self.image_key = image_key
        self.other_keys = _keys(other_keys)
        self.threshold = float(threshold)

    def __call__(self, case):
        case = dict(case)
        box = black_border_box(case[self.image_key], self.threshold)
        if box is None:
            raise DataError(_source(case, self.image_key), "the image is entirely black",
                            "remove this case or replace the file")
        for key in (self.image_key,) + self.other_keys:
            case[key] = case[key][box]
        return case


class Resize(Transform):
    """Resize keys to ``size`` with one interpolation order per key (1 image, 0 label)."""

    def __init__(self, keys, size, orders=None):
        self.keys = _keys(keys)
        self.size = tuple(int(n) for n in size)
        self.orders = tuple(int(o) for o in (orders if orders is not None else [1] * len(self.keys)))
        if len(self.orders) != len(self.keys):
            raise ValueError(f"Resize: {len(self.keys)} keys but {len(self.orders)} orders")

    def __call__(self, case):
        case = dict(case)
        for key, order in zip(self.keys, self.orders, strict=True):
            case[key] = resize(case[key], self.size, order)
        return case


class Compose(Transform):
    """Apply transforms in order; random ones get the ``rng`` passed to the call."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, case, rng: np.random.Generator | None = None):
        for transform in self.transforms:
            if isinstance(transform, (RandomTransform, Compose)):
                case = transform(case, rng)
            else:
                case = transform(case)
        return case

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


# ---- deterministic twins of the random transforms ----


class Flip(Transform):
    """Mirror the given spatial axes (0 = first spatial axis) of every key."""

    def __init__(self, keys, axes, spatial_dims: int = 3):
        self.keys = _keys(keys)
        self.axes = tuple(int(a) for a in axes)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            array = case[key]
            leading = array.ndim - self.spatial_dims
            case[key] = np.flip(array, axis=tuple(leading + a for a in self.axes)).copy() if self.axes else array
        return case


class Affine(Transform):
    """Rotate (in the plane of the first two spatial axes) and scale about the array centre."""

    def __init__(self, keys, orders, degrees: float = 0.0, scale: float = 1.0, spatial_dims: int = 3):
        self.keys = _keys(keys)
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
        case = dict(case)
        if self.degrees == 0.0 and self.scale == 1.0:  # the identity: nothing moves
            for key in self.keys:
                case[key] = np.asarray(case[key], dtype=np.float32)
            return case
        matrix = self.matrix()
        plans = {}  # one sampling plan per (grid, order): the image and its label share the geometry
        for key, order in zip(self.keys, self.orders, strict=True):
            array = np.asarray(case[key], dtype=np.float32)
            spatial = array.shape[array.ndim - self.spatial_dims:]
            if (spatial, order) not in plans:
                centre = (np.array(spatial) - 1) / 2
                plans[spatial, order] = InPlanePlan(matrix, centre - matrix @ centre, spatial, order)
            case[key] = plans[spatial, order].apply(array)
        return case


@functools.lru_cache(maxsize=16)
def _pixel_grid(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) index of every pixel of an nx x ny plane, flattened (read-only, cached)."""
    grid_x, grid_y = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="ij")
    grid_x, grid_y = grid_x.ravel(), grid_y.ravel()
    grid_x.flags.writeable = grid_y.flags.writeable = False
    return grid_x, grid_y


class InPlanePlan:
    """Where each output voxel samples its input, for :func:`affine_in_plane`: worked out once
    for a grid, a matrix and an order, then applied to any number of arrays on that grid.

    In plane: the flat (x, y) source index of each output pixel and its weight, for 1 (nearest)
    or 4 (linear) neighbours, with the weight 0 for pixels that fall outside. Along the third
    axis: a small interpolation matrix (:func:`_axis_matrix`).
    """

    def __init__(self, matrix: np.ndarray, offset: np.ndarray, spatial, order: int):
        dims = len(offset)
        if dims == 3 and (np.abs(matrix[2, :2]).max() > 0 or np.abs(matrix[:2, 2]).max() > 0):
            raise ValueError("affine_in_plane: the third axis must not mix with the first two")
        self.spatial, self.order = tuple(int(n) for n in spatial), int(order)
        nx, ny = self.spatial[:2]
        # the third axis as a small (Z in, Z out) interpolation matrix: one matrix product
        self.z = _axis_matrix(matrix[2, 2], offset[2], self.spatial[2], order) if dims == 3 else None
        grid_x, grid_y = _pixel_grid(nx, ny)
        source_x = matrix[0, 0] * grid_x + matrix[0, 1] * grid_y + offset[0]
        source_y = matrix[1, 0] * grid_x + matrix[1, 1] * grid_y + offset[1]
        tolerance = 1e-9 * max(nx, ny)  # positions on the edge, give or take rounding, are inside
        inside = ((source_x >= -tolerance) & (source_x <= nx - 1 + tolerance)
                  & (source_y >= -tolerance) & (source_y <= ny - 1 + tolerance))
        if self.order == 0:
            near_x = np.clip(np.floor(source_x + 0.5), 0, nx - 1).astype(np.intp)
            near_y = np.clip(np.floor(source_y + 0.5), 0, ny - 1).astype(np.intp)
            self.taps = [(near_x * ny + near_y, inside.astype(np.float32)[:, None])]
            return
        low_x = np.clip(np.floor(source_x), 0, max(nx - 2, 0)).astype(np.intp)
        low_y = np.clip(np.floor(source_y), 0, max(ny - 2, 0)).astype(np.intp)
        weight_x = np.clip(source_x - low_x, 0, 1) * inside if nx > 1 else np.zeros(nx * ny)
        weight_y = np.clip(source_y - low_y, 0, 1) if ny > 1 else np.zeros(nx * ny)
        stay_x = inside - weight_x  # (1 - weight_x), 0 outside
        high_x, high_y = np.minimum(low_x + 1, nx - 1), np.minimum(low_y + 1, ny - 1)
        self.taps = [(index_x * ny + index_y, weight.astype(np.float32)[:, None]) for index_x, index_y, weight in (
            (low_x, low_y, stay_x * (1 - weight_y)), (low_x, high_y, stay_x * weight_y),
            (high_x, low_y, weight_x * (1 - weight_y)), (high_x, high_y, weight_x * weight_y))]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The resampled ``array`` (..., X, Y[, Z]), float32, a new array."""
        array = np.asarray(array, dtype=np.float32)
        dims = 3 if self.z is not None else 2
        if array.shape[array.ndim - dims:] != self.spatial:
            raise ValueError(f"affine_in_plane: planned for a {self.spatial} grid, got {array.shape}")
        nx, ny = self.spatial[:2]
        nz = self.spatial[2] if dims == 3 else 1
        # (channels, x * y, z): each pixel's column of z values is contiguous, so one gather
        # moves whole columns.
        columns = np.ascontiguousarray(array).reshape(-1, nx * ny, nz)
        out = scratch = None  # two buffers for all the taps: fewer fresh pages to fill
        for index, weight in self.taps:
            if out is None:
                out = np.take(columns, index, axis=1)
                out *= weight
                continue
            scratch = np.take(columns, index, axis=1, out=scratch, mode="clip")  # valid indices; unbuffered
            scratch *= weight
            out += scratch
        if dims == 3:  # then the third axis on its own
            out = _small_matmul(out.reshape(-1, nz), self.z)
        return out.reshape(array.shape)


def _small_matmul(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` in slices small enough that BLAS stays on this thread.

    OpenBLAS starts its thread pool for products above ~2**18 multiply-adds, and its threads
    then spin on the other cores for a while: while a CPU network trains, that costs more
    than the product (measured: the iterator's overhead per smoke epoch went from ~2.5 % to
    ~9 %).
    """
    out = np.empty((rows.shape[0], matrix.shape[1]), np.result_type(rows, matrix))
    step = max(1, 2**16 // max(1, matrix.shape[0] * matrix.shape[1]))
    for start in range(0, rows.shape[0], step):
        np.matmul(rows[start:start + step], matrix, out=out[start:start + step])
    return out


def _axis_matrix(scale: float, offset: float, size: int, order: int) -> np.ndarray:
    """:func:`_resample_axis` along an axis of ``size`` voxels (output the same size) as a
    ``(size, size)`` float32 matrix ``M``: ``resampled = values @ M``.

    Row ``i`` of the identity, resampled, holds the weight of input voxel ``i`` in every output
    voxel; so ``M`` is the identity resampled along its second axis, by the very same rules.
    """
    return _resample_axis(np.eye(size, dtype=np.float32), 1, scale, offset, size, order)


def affine_in_plane(array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, order: int) -> np.ndarray:
    """``ndimage.affine_transform(order=0 or 1, mode='constant', cval=0)`` of every channel of
    ``array`` (..., X, Y[, Z]) for a matrix that moves only the first two spatial axes together
    (a rotation in that plane) and scales the third on its own, as :class:`Affine` builds.

    All (x, y) planes of all channels share one set of source positions and weights
    (:class:`InPlanePlan`): 4 gathers of whole z columns (1 for nearest neighbour) instead of
    one general 3D sampler per channel; then the third axis is resampled on its own, with one
    small matrix product. Several times faster than ``ndimage.affine_transform`` for the labs' augmentation,
    with the same values (``tests/test_data_transforms.py``).
    """
    array = np.asarray(array, dtype=np.float32)
    spatial = array.shape[array.ndim - len(offset):]
    return InPlanePlan(matrix, offset, spatial, order).apply(array)


class Intensity(Transform):
    """``image * scale + shift`` (channel-wide)."""

    def __init__(self, keys, scale: float = 1.0, shift: float = 0.0):
        self.keys = _keys(keys)
        self.scale = float(scale)
        self.shift = float(shift)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            out = np.multiply(case[key], np.float32(self.scale), dtype=np.float32)
            out += np.float32(self.shift)
            case[key] = out
        return case


# ---- random transforms ----


class RandomFlip(RandomTransform):
    """Mirror each of ``axes`` with ``probability`` (the same draw for every key)."""

    def __init__(self, keys, axes=(0,), probability: float = 0.5, spatial_dims: int = 3):
        self.keys = _keys(keys)
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
        self.keys = _keys(keys)
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
        self.keys = _keys(keys)
        self.scale = tuple(float(s) for s in scale)
        self.shift = tuple(float(s) for s in shift)

    def draw(self, rng):
        return Intensity(self.keys, rng.uniform(*self.scale), rng.uniform(*self.shift))


class Shuffle:
    """Per-epoch transform of the whole case list: a seeded permutation (no copies made)."""

    def __call__(self, cases: list, rng: np.random.Generator) -> list:
        return [cases[i] for i in rng.permutation(len(cases))]

    def __repr__(self) -> str:
        return "Shuffle()"
