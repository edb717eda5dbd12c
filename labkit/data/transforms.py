"""Every transform and array function in one place: ``from labkit.data.transforms import ...``.

A preparation chain is a plain list of dict transforms, each a callable ``case -> new case``::

    chain = [LoadNifti(["image", "label"]), Reorient(["image", "label"]),
             Resample(["image"], spacing=(1, 1, 1), order=1), ...]
    case = Compose(chain)(case)

They live by what they hold (this module only gathers them):

==========================  ===============================================================
``labkit.data.arrays``      array functions, plain numpy (``resample``, ``crop_or_pad``, ...)
``labkit.data.wrappers``    the ``Transform`` base, ``Compose``, dict wrappers of the array
                            functions (``Reorient``, ``Resample``, ``CropOrPad``, ...)
``labkit.data.readers``     file readers (``LoadNifti``, ``LoadPNG``, ``read_png``)
``labkit.data.augment``     augmentation (``Flip`` / ``RandomFlip``, ``Affine`` /
                            ``RandomAffine``, ``Intensity`` / ``RandomIntensity``, ``Shuffle``)
==========================  ===============================================================
"""

# ruff: noqa: F401  (this module re-exports)

from labkit.data.arrays import (
    affine_in_plane,
    black_border_box,
    crop_black_border,
    crop_or_pad,
    crop_or_pad_start,
    fuse_masks,
    map_labels,
    normalize_intensity,
    reorient_to_canonical,
    resample,
    resample_axis,
    resampled_grid,
    resize,
    separable_resample,
)
from labkit.data.augment import (
    Affine,
    Flip,
    Intensity,
    RandomAffine,
    RandomFlip,
    RandomIntensity,
    Shuffle,
)
from labkit.data.errors import DataError, DataWarning
from labkit.data.readers import MAX_VOLUME_MB, LoadNifti, LoadPNG, is_junk, read_nifti, read_png
from labkit.data.wrappers import (
    Compose,
    CropBlackBorder,
    CropOrPad,
    FuseMasks,
    MapLabels,
    NormalizeIntensity,
    PadToMultiple,
    RandomTransform,
    Reorient,
    Resample,
    Resize,
    Transform,
)
