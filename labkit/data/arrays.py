"""Array functions: plain numpy in, numpy out, no case dicts (the dict wrappers call them).

3D volumes are channels-first ``(C, X, Y, Z)``, 2D images ``(H, W)``; spatial functions act on
the trailing axes. scipy and nibabel are imported where they are used.
"""

from __future__ import annotations

import numpy as np

__all__ = ["affine_in_plane", "black_border_box", "crop_or_pad", "crop_or_pad_start", "fuse_masks",
           "map_labels", "normalize_intensity", "reorient_to_canonical", "resample", "resample_axis",
           "resampled_grid", "resize", "separable_resample"]


def reorient_to_canonical(array: np.ndarray, affine: np.ndarray):
    """Flip / permute the last three axes to Right, Anterior, Superior (RAS); returns
    ``(array, affine)``.

    Whole-voxel moves only: an oblique affine keeps its small rotation (:func:`resample` removes
    it). The array is a view with negative strides: ``np.ascontiguousarray`` it before
    ``torch.from_numpy``.
    """
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt("RAS"))
    spatial_shape = array.shape[-3:]
    channels_last = np.moveaxis(array, tuple(range(array.ndim - 3)), tuple(range(3, array.ndim)))
    moved = nib.orientations.apply_orientation(channels_last, transform)
    array = np.moveaxis(moved, tuple(range(3, array.ndim)), tuple(range(array.ndim - 3)))
    return array, affine @ nib.orientations.inv_ornt_aff(transform, spatial_shape)


def resampled_grid(shape, affine: np.ndarray, spacing):
    """``(target_shape, target_affine)`` of :func:`resample`: axes along x/y/z with ``spacing``
    mm, covering the whole input (nilearn's ``resample_img(target_affine=np.diag(spacing))``)."""
    target = np.eye(4)
    target[:3, :3] = np.diag(np.asarray(spacing, dtype=float))
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    in_target = np.linalg.inv(target) @ affine @ np.vstack([corners, np.ones(corners.shape[1])])
    low, high = in_target[:3].min(axis=1), in_target[:3].max(axis=1)
    target[:3, 3] = target[:3, :3] @ low
    return tuple(int(np.ceil(extent)) + 1 for extent in high - low), target


def resample(array: np.ndarray, affine: np.ndarray, spacing, order: int = 1):
    """Resample the last three axes of ``array`` (voxel-to-world ``affine``) onto an axis-aligned
    grid of ``spacing`` mm (x, y, z); ``order`` 1 (linear) for images, 0 (nearest) for labels.
    Returns ``(float32 array, affine)``.

    An axis-aligned input (every case after reorientation, unless oblique) is resampled one axis
    at a time (:func:`separable_resample`): the values of ``ndimage.affine_transform``, faster
    (``make bench``, data section, holds the cold preparation to its target). Oblique inputs go
    through ``affine_transform``.
    """
    target_shape, target_affine = resampled_grid(array.shape[-3:], affine, spacing)
    matrix = np.linalg.inv(affine) @ target_affine  # target voxel -> source voxel
    flat = array.reshape((-1,) + array.shape[-3:]).astype(np.float32, copy=False)
    linear = matrix[:3, :3]
    if np.abs(linear - np.diag(np.diag(linear))).max() <= 1e-9 * np.abs(np.diag(linear)).max():
        out = [separable_resample(volume, matrix, target_shape, order) for volume in flat]
    else:
        from scipy import ndimage

        out = [ndimage.affine_transform(volume, linear, offset=matrix[:3, 3], order=order,
                                        output_shape=target_shape, cval=0.0) for volume in flat]
    return np.stack(out).reshape(array.shape[:-3] + target_shape), target_affine


def separable_resample(volume: np.ndarray, matrix: np.ndarray, output_shape, order: int) -> np.ndarray:
    """``ndimage.affine_transform(order=0 or 1, mode='constant', cval=0)`` for a diagonal matrix.

    The passes run in memory order (whatever flips and axis swaps a reoriented view has), the
    ones that shrink the volume most first, so the later passes touch fewer voxels.
    """
    memory_order = np.argsort([-abs(stride) for stride in volume.strides], kind="stable")
    out = volume.transpose(memory_order)
    shrink = [output_shape[axis] / max(volume.shape[axis], 1) for axis in memory_order]
    for position in sorted(range(3), key=lambda p: shrink[p]):
        axis = memory_order[position]
        out = resample_axis(out, position, matrix[axis, axis], matrix[axis, 3], output_shape[axis], order)
    return out.transpose(np.argsort(memory_order))


def resample_axis(volume: np.ndarray, axis: int, scale: float, offset: float, size: int,
                  order: int) -> np.ndarray:
    """Sample ``volume`` along ``axis`` at ``scale * i + offset`` (i < ``size``), nearest
    (``order=0``) or linear; 0 outside ``[0, n - 1]``."""
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


def affine_in_plane(array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, order: int) -> np.ndarray:
    """``ndimage.affine_transform(order=0 or 1, cval=0)`` of every channel of ``array``
    (..., X, Y[, Z]) for a matrix that turns the first two spatial axes together and scales the
    third on its own, as :class:`~labkit.data.augment.Affine` builds.

    Every (x, y) plane shares one set of source positions: the output is a weighted sum of 4
    gathers of whole z columns (1 for nearest), then the third axis is resampled on its own. The
    values are ``affine_transform``'s (``tests/test_data_transforms.py``), faster: augmentation
    runs on every batch (``make bench``, data section, iterator overhead).
    """
    array = np.asarray(array, dtype=np.float32)
    dims = len(offset)
    if dims == 3 and (np.abs(matrix[2, :2]).max() > 0 or np.abs(matrix[:2, 2]).max() > 0):
        raise ValueError("affine_in_plane: the third axis must not mix with the first two")
    spatial = array.shape[array.ndim - dims:]
    nx, ny = spatial[:2]
    grid_x, grid_y = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="ij")
    source_x = (matrix[0, 0] * grid_x + matrix[0, 1] * grid_y + offset[0]).ravel()
    source_y = (matrix[1, 0] * grid_x + matrix[1, 1] * grid_y + offset[1]).ravel()
    tolerance = 1e-9 * max(nx, ny)  # positions on the edge, give or take rounding, are inside
    inside = ((source_x >= -tolerance) & (source_x <= nx - 1 + tolerance)
              & (source_y >= -tolerance) & (source_y <= ny - 1 + tolerance)).astype(float)
    if order == 0:
        near_x = np.clip(np.floor(source_x + 0.5), 0, nx - 1).astype(np.intp)
        near_y = np.clip(np.floor(source_y + 0.5), 0, ny - 1).astype(np.intp)
        taps = [(near_x, near_y, inside)]
    else:
        low_x = np.clip(np.floor(source_x), 0, max(nx - 2, 0)).astype(np.intp)
        low_y = np.clip(np.floor(source_y), 0, max(ny - 2, 0)).astype(np.intp)
        weight_x = np.clip(source_x - low_x, 0, 1) * inside if nx > 1 else 0 * inside
        weight_y = np.clip(source_y - low_y, 0, 1) if ny > 1 else 0 * inside
        stay_x = inside - weight_x  # (1 - weight_x), 0 outside
        high_x, high_y = np.minimum(low_x + 1, nx - 1), np.minimum(low_y + 1, ny - 1)
        taps = [(low_x, low_y, stay_x * (1 - weight_y)), (low_x, high_y, stay_x * weight_y),
                (high_x, low_y, weight_x * (1 - weight_y)), (high_x, high_y, weight_x * weight_y)]
    # (channels, x * y, z): each pixel's z values are contiguous, so a gather moves whole columns
    columns = np.ascontiguousarray(array).reshape(-1, nx * ny, spatial[2] if dims == 3 else 1)
    out = None
    for index_x, index_y, weight in taps:
        term = np.take(columns, index_x * ny + index_y, axis=1)
        term *= weight.astype(np.float32)[:, None]
        out = term if out is None else np.add(out, term, out=out)
    if dims == 3:  # the third axis: a product with the identity resampled by the same rules,
        # as a stack of small products, each of which BLAS computes on this thread
        along_z = resample_axis(np.eye(spatial[2], dtype=np.float32), 1, matrix[2, 2], offset[2], spatial[2], order)
        out = np.matmul(out.reshape(-1, ny, spatial[2]), along_z)
    return out.reshape(array.shape)


def normalize_intensity(array: np.ndarray, mode: str = "zscore", per_channel: bool = True,
                        percentiles=(0.5, 99.5)) -> np.ndarray:
    """Scale intensities, channel by channel (first axis) when ``per_channel``: ``zscore`` (zero
    mean, unit standard deviation) or ``minmax`` (``percentiles`` to 0 and 1, clipped). A
    constant channel becomes all zeros."""
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
    out[tuple(target)] = array[tuple(source)]
    return out


def black_border_box(image: np.ndarray, threshold: float = 0.0):
    """Rows and columns (as slices) that remain after removing all-black outer rows / columns."""
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def resize(array: np.ndarray, size, order: int = 1) -> np.ndarray:
    """Resize the last ``len(size)`` axes to ``size``; ``order`` 1 for images (smoothed first
    when shrinking), 0 for labels (nearest neighbour keeps label values)."""
    from scipy import ndimage

    size = tuple(int(n) for n in size)
    leading = array.ndim - len(size)
    factors = [1.0] * leading + [new / old for new, old in zip(size, array.shape[leading:], strict=True)]
    array = np.asarray(array, dtype=np.float32)
    if order > 0 and min(factors) < 1:
        array = ndimage.gaussian_filter(array, [max(0.0, (1 / factor - 1) / 2) for factor in factors])
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


def fuse_masks(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One binary label (float32 0/1) from two masks: a pixel is lung if either mask says so."""
    return ((np.asarray(left) > 0.5) | (np.asarray(right) > 0.5)).astype(np.float32)


def map_labels(label: np.ndarray, mapping: dict) -> np.ndarray:
    """Replace label values through ``mapping`` ({old: new}), float32 out; a value without an
    entry is a ValueError. Integer labels (a label file's) go through a lookup table."""
    label = np.asarray(label)
    if label.dtype.kind in "iu" and label.size and label.min() >= 0 and label.max() < 2**16:
        table = np.full(int(label.max()) + 1, np.nan, np.float32)
        for old, new in mapping.items():
            if float(old).is_integer() and 0 <= old < table.size:
                table[int(old)] = new
        out = table[label]
        unknown = np.unique(label[np.isnan(out)]).tolist()
    else:
        unknown = [value for value in np.unique(label).tolist() if value not in mapping]
        out = np.zeros(label.shape, np.float32)
        for old, new in mapping.items():
            out[label == old] = new
    if unknown:
        shown = ", ".join(f"{value:g}" for value in unknown[:5])
        raise ValueError(f"label values [{shown}] are not in {sorted(mapping)}")
    return out
