"""The data layer: ``prostate`` and ``lung`` (cases, splits, ready-made chains), ``transforms``
(every transform), ``batching`` (``BatchIterator``), ``cache``, ``splits`` and ``errors``; the
synthetic sets are made by ``data_scripts/phantoms.py``. Importing it loads numpy only; scipy,
nibabel and Pillow are imported where they are used.

    from labkit.data import prostate, BatchIterator
    train = BatchIterator(prostate.load_splits()["train"], batch_size=2,
                          before=prostate.preprocessing(spacing=(3, 3, 3), size=(64, 64, 32)))
"""

from labkit.data import lung, prostate, splits, transforms
from labkit.data.batching import BatchIterator
from labkit.data.errors import DataError, DataWarning

__all__ = ["BatchIterator", "DataError", "DataWarning", "lung", "prostate", "splits", "transforms"]
