"""A fixed, seeded, written-down train / validation / test split.

Neither data set comes with one, so cases are shuffled with a seed, cut by ``fractions``, and the
ids written to ``<dataset_dir>/labkit_splits.json``. Later runs read that file, so every notebook,
test and benchmark sees the same split even if the shuffling code changes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from labkit.data.errors import DataError
from labkit.io import atomic_write_json

SPLITS_FILE = "labkit_splits.json"
PARTS = ("train", "validation", "test")


def split_ids(ids, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """Shuffle ``ids`` with ``seed`` and cut them by ``fractions``; with three or more ids,
    validation and test get at least one each.

    Example:
        >>> parts = split_ids([f"c{i}" for i in range(10)], seed=0)
        >>> [len(parts[p]) for p in ("train", "validation", "test")]
        [7, 2, 1]
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    ids = sorted(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_validation, n_test = (int(round(len(ids) * part / sum(fractions))) for part in fractions[1:])
    if len(ids) >= 3:
        n_validation = max(n_validation, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = len(ids) - n_validation - n_test
    return {"train": sorted(order[:n_train]), "validation": sorted(order[n_train:n_train + n_validation]),
            "test": sorted(order[n_train + n_validation:])}


def load_splits(dataset_dir, cases, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """``{'train': [case, ...], 'validation': [...], 'test': [...]}`` of ``cases`` (dicts with an
    ``id``), written once and reused; rewritten when its ids no longer match the cases (another
    data set was put in place), computed but not written in a read-only folder."""
    path = Path(dataset_dir) / SPLITS_FILE
    by_id = {case["id"]: case for case in cases}
    parts = None
    if path.exists():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            parts = {part: [str(i) for i in record[part]] for part in PARTS}
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(path, f"the split file is malformed ({error})",
                            "delete it; a new split is written on the next run") from None
    if parts is None or sorted(sum(parts.values(), [])) != sorted(by_id):
        parts = split_ids(by_id, fractions, seed)
        try:
            atomic_write_json(path, dict(parts, seed=seed, fractions=list(fractions)))
        except OSError as error:
            warnings.warn(f"{path}: could not save the split ({error}); it is recomputed each time",
                          stacklevel=2)
    return {part: [by_id[i] for i in parts[part]] for part in PARTS}
