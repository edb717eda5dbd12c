"""Every transform and array function in one place: ``from labkit.data.transforms import ...``.

They live by what they hold (each module's ``__all__`` is re-exported here): ``arrays`` (numpy
functions), ``wrappers`` (``Transform``, ``Compose`` and the dict wrappers), ``readers`` (files)
and ``augment`` (deterministic transforms, their random twins, ``Shuffle``). A preparation chain
is a list of them: ``Compose([LoadNifti(["image"]), Reorient(["image"]), ...])(case)``.
"""

# ruff: noqa: F401, F403  (this module re-exports)

from labkit.data.arrays import *
from labkit.data.augment import *
from labkit.data.errors import DataError, DataWarning
from labkit.data.readers import *
from labkit.data.wrappers import *
