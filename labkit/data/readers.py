"""File readers: NIfTI volumes and PNG images into arrays (``LoadNifti``, ``LoadPNG``: the first
step of a chain). A damaged, truncated, mis-shaped or mismatched file is a DataError naming it."""

from __future__ import annotations

import os
import warnings

import numpy as np

from labkit.data.errors import DataError, DataWarning
from labkit.data.wrappers import Transform, key_tuple

__all__ = ["MAX_VOLUME_MB", "LoadNifti", "LoadPNG", "is_junk", "read_nifti", "read_png"]

MAX_VOLUME_MB = float(os.environ.get("LABKIT_MAX_VOLUME_MB", 2048))  # largest volume read, as float32
JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX")


def is_junk(name: str) -> bool:
    """True for macOS / Windows litter: ``._*`` resource forks, ``.DS_Store``, ``__MACOSX``."""
    return name.startswith("._") or name in JUNK_NAMES


class LoadNifti(Transform):
    """Read NIfTI files into channels-first float32 arrays ``(C, X, Y, Z)`` sharing one grid, with
    ``<key>_meta`` = {path, affine, spacing, shape, grid_affine}.

    Args:
        keys: case keys holding paths.
        channels: optional {key: expected channel count}; 1 means a 3D file.
        max_mb: refuse volumes larger than this (as float32) with a clear error.
        integer_keys: label keys whose unscaled integer voxels stay integers (``MapLabels`` maps
            them without converting every voxel to float32 first).
    """

    def __init__(self, keys, channels: dict | None = None, max_mb: float | None = None, integer_keys=()):
        self.keys = key_tuple(keys)
        self.channels = dict(channels or {})
        self.integer_keys = key_tuple(integer_keys)
        self._max_mb = MAX_VOLUME_MB if max_mb is None else float(max_mb)  # not in repr: same output

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            path = os.fspath(case[key])
            case[key], affine = read_nifti(path, self.channels.get(key), self._max_mb,
                                           keep_integers=key in self.integer_keys)
            case[f"{key}_meta"] = {"path": path, "affine": affine, "shape": tuple(case[key].shape[1:]),
                                   "spacing": tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
                                   "grid_affine": affine}
        _check_same_grid(case, self.keys, "grid", "use the label made for this image (same case number)")
        return case


def read_nifti(path: str, channels: int | None = None, max_mb: float = MAX_VOLUME_MB,
               keep_integers: bool = False):
    """One NIfTI file as ``(array (C, X, Y, Z), affine)``, float32 (``keep_integers``: the file's
    unscaled integers, native byte order), each channel one contiguous block. Every failure is a
    DataError; NaN / Inf voxels become 0 with a DataWarning naming the file."""
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
        proxy = _whole_file(path, image).dataobj
        unscaled = getattr(proxy, "slope", 1.0) in (None, 1.0) and getattr(proxy, "inter", 0.0) in (None, 0.0)
        if keep_integers and image.get_data_dtype().kind in "iub" and unscaled:
            array = proxy.get_unscaled()
            array = array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
        else:
            array = np.asarray(proxy, dtype=np.float32)
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise DataError(path, f"the file is damaged or truncated ({type(error).__name__}: {error})",
                        "download or generate it again (`make data` rebuilds synthetic sets)") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        warnings.warn(f"{path}: {bad} NaN/Inf voxels replaced by 0", DataWarning, stacklevel=4)
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    array = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)  # channels first: a view
    return array, np.asarray(image.affine, dtype=float)


def _whole_file(path: str, image):
    """``image`` with its voxels decompressed from the whole ``.nii.gz`` file at once: ISA-L's gzip
    (the ``isal`` package) does it in one call, faster than the zlib stream nibabel reads through
    (decompressing is a large part of a cold preparation, which ``make bench`` times)."""
    if not path.endswith(".nii.gz"):
        return image
    try:
        from isal import igzip as gzip
    except ImportError:  # without the package: the standard library's zlib
        import gzip
    with open(path, "rb") as handle:
        return type(image).from_bytes(gzip.decompress(handle.read()))


def _check_dimensions(path: str, shape: tuple, channels: int | None) -> None:
    if len(shape) not in (3, 4):
        raise DataError(path, f"expected a 3D or 4D volume, found shape {shape}",
                        "use a volume (x, y, z) or a multi-channel volume (x, y, z, channels)")
    if channels is None or channels == (1 if len(shape) == 3 else shape[3]):
        return
    if channels == 1:
        raise DataError(path, f"expected a 3D volume (one channel), found shape {shape}",
                        "labels are 3D: check that image and label files were not swapped")
    raise DataError(path, f"expected a 4D volume with {channels} channels, found shape {shape}",
                    f"use the multi-channel file (x, y, z, {channels}); check that image and "
                    "label files were not swapped")


def _check_same_grid(case: dict, keys, word: str, fix: str) -> None:
    """Every key's array on the first key's grid: same shape, same affine (when there is one)."""
    reference = case[f"{keys[0]}_meta"]
    for meta in (case[f"{key}_meta"] for key in keys[1:]):
        if meta["shape"] != reference["shape"]:
            raise DataError(meta["path"], f"{word} {meta['shape']} differs from the image's "
                            f"{reference['shape']} ({reference['path']})", fix)
        tolerance = 0.05 * min(reference.get("spacing", [1.0]))  # header rounding, not another grid
        if "affine" in meta and not np.allclose(meta["affine"], reference["affine"], atol=tolerance):
            raise DataError(meta["path"], "affine (position / orientation) differs from the image's "
                            f"({reference['path']})",
                            "use the label made for this image, or resample it onto the image grid")


class LoadPNG(Transform):
    """Read PNGs as 2D float32 arrays in [0, 1] (:func:`read_png`) of one size, with
    ``<key>_meta`` = {path, shape}."""

    def __init__(self, keys):
        self.keys = key_tuple(keys)

    def __call__(self, case):
        case = dict(case)
        for key in self.keys:
            path = os.fspath(case[key])
            case[key] = read_png(path)
            case[f"{key}_meta"] = {"path": path, "shape": case[key].shape}
        _check_same_grid(case, self.keys, "size", "use the mask made for this image (same file name)")
        return case


def read_png(path: str) -> np.ndarray:
    """One PNG as a float32 (H, W) array in [0, 1]; every failure is a DataError. Colour becomes
    gray (alpha dropped); 16-bit is divided by 4095 when it fits 12 bits (X-ray), else 65535."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DataError(path, "file not found", "check the path or run `make data` / the fetch script")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I"):  # 16-bit: "I;16", "I;16B", "I;16L" or "I"
                array = np.asarray(image, dtype=np.float32)
                return np.clip(array / (4095.0 if array.max() <= 4095 else 65535.0), 0, 1)
            if "A" in image.mode or image.mode == "P":  # transparency / palette: drop alpha via RGB
                image = image.convert("RGBA").convert("RGB")
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(path, f"not a readable PNG image ({type(error).__name__}: {error})",
                        "replace it with a valid PNG (download or generate it again)") from None
