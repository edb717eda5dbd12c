"""Every transform and array function in one place: ``from labkit.data.transforms import ...``.

A preparation chain is a list of dict transforms (``case -> new case``)::

    chain = [LoadNifti(["image", "label"]), Reorient(["image", "label"]),
             Resample(["image"], spacing=(1, 1, 1), order=1), ...]
    case = Compose(chain)(case)

They live by what they hold (each module's ``__all__`` is re-exported here): ``arrays`` (numpy
functions), ``wrappers`` (``Transform``, ``Compose`` and the dict wrappers), ``readers`` (files)
and ``augment`` (deterministic transforms, their random twins, ``Shuffle``).
"""

# ruff: noqa: F401, F403  (this module re-exports)

from labkit.data.arrays import *
from labkit.data.augment import *
from labkit.data.errors import DataError, DataWarning
from labkit.data.readers import *
from labkit.data.wrappers import *
