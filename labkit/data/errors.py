"""The error the data layer raises for bad input, and the warning for input it repaired.

A :class:`DataError` message always says which file, what is wrong with it and what to do,
so a student can fix the problem without reading a traceback. This module imports nothing
heavy: every module (and ``labkit.viz``) can import it.
"""

from __future__ import annotations

import os

NO_DATA_FIX = "no data found — run `make data` or fetch the real set"
NO_DATA_HELP = ("`make data` builds small synthetic sets in a minute; data_scripts/fetch_prostate.py "
                "and data_scripts/fetch_montgomery.py download the real ones (set LABKIT_DATA "
                "if your data lives elsewhere)")


class DataError(ValueError):
    """Bad or missing input data.

    Args:
        path: the file or folder concerned (None when there is no single file).
        problem: what is wrong, in plain words.
        fix: what the user should do about it.

    Example:
        >>> raise DataError("data/x.nii.gz", "the file is truncated", "download it again")
        Traceback (most recent call last):
        ...
        labkit.data.errors.DataError: data/x.nii.gz: the file is truncated. Fix: download it again.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}.")

    def __reduce__(self):  # keep the three parts when sent across a process pool
        return (type(self), (self.path, self.problem, self.fix))


class DataWarning(UserWarning):
    """Input was repaired (for example NaN voxels replaced); the message names the file."""
