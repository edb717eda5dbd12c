"""Every transform and array function in one place: ``from labkit.data.transforms import ...``
re-exports the ``__all__`` of ``arrays`` (numpy functions), ``wrappers`` (``Transform``,
``Compose``, the dict wrappers), ``readers`` (files) and ``augment`` (augmentation, ``Shuffle``).
"""

# ruff: noqa: F401, F403  (this module re-exports)

from labkit.data.arrays import *
from labkit.data.augment import *
from labkit.data.errors import DataError, DataWarning
from labkit.data.readers import *
from labkit.data.wrappers import *
