"""``DataError`` for bad input data, ``DataWarning`` for input that was repaired. This module
imports nothing heavy: every module can import it."""

from __future__ import annotations

import os

NO_DATA_FIX = "no data found — run `make data` or fetch the real set"
NO_DATA_HELP = ("`make data` builds small synthetic sets in a minute; data_scripts/fetch_prostate.py "
                "and data_scripts/fetch_montgomery.py download the real ones (set LABKIT_DATA "
                "if your data lives elsewhere)")


class DataError(ValueError):
    """Bad or missing input data: the ``path`` concerned (None: no single file), the ``problem``
    and the ``fix``, in plain words, so a student can fix it without reading a traceback.

    Example:
        >>> raise DataError("data/x.nii.gz", "the file is truncated", "download it again")
        Traceback (most recent call last):
        ...
        labkit.data.errors.DataError: data/x.nii.gz: the file is truncated. Fix: download it again.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str):
        self.path, self.problem, self.fix = None if path is None else os.fspath(path), problem, fix
        super().__init__(f"{self.path + ': ' if self.path else ''}{problem}. Fix: {fix}.")


class DataWarning(UserWarning):
    """Input was repaired (for example NaN voxels replaced); the message names the file."""
