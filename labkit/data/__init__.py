"""The data layer: readers, transforms, batching, disk cache and synthetic phantoms.

    from labkit.data import prostate, BatchIterator
    split = prostate.load_splits()
    train = BatchIterator(split["train"], batch_size=2,
                          before=prostate.preprocessing(spacing=(3, 3, 3), size=(64, 64, 32)))

Modules: ``prostate`` and ``lung`` (cases, splits, ready-made chains), ``transforms`` (every
transform, gathered from ``arrays``, ``wrappers``, ``readers`` and ``augment``), ``batching``
(``BatchIterator``), ``cache``, ``splits``, ``phantoms`` (synthetic data), ``errors``
(``DataError``, ``DataWarning``). Importing the package loads numpy only; scipy, nibabel and
Pillow are imported where they are used.
"""

from labkit.data import lung, prostate, splits, transforms
from labkit.data.batching import BatchIterator
from labkit.data.errors import DataError, DataWarning

__all__ = ["BatchIterator", "DataError", "DataWarning", "lung", "prostate", "splits", "transforms"]
