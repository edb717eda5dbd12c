"""Every transform and array function in one place: ``from labkit.data.transforms import ...``.

A preparation chain is a list of dict transforms (``case -> new case``)::

    chain = [LoadNifti(["image", "label"]), Reorient(["image", "label"]),
             Resample(["image"], spacing=(1, 1, 1), order=1), ...]
    case = Compose(chain)(case)

They live by what they hold: ``arrays`` (numpy functions), ``wrappers`` (``Transform``,
``Compose`` and the dict wrappers), ``readers`` (files) and ``augment`` (deterministic
transforms, their random twins, ``Shuffle``).
"""

# ruff: noqa: F401  (this module re-exports)

from labkit.data.arrays import (
    affine_in_plane,
    crop_black_border,
    crop_or_pad,
    crop_or_pad_start,
    fuse_masks,
    map_labels,
    normalize_intensity,
    reorient_to_canonical,
    resample,
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
from labkit.data.readers import LoadNifti, LoadPNG, is_junk, read_nifti, read_png
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
