"""Disk cache of prepared cases, which depend only on the transform settings and the sources::

    <cache root>/prepared/<hash of the transforms' reprs>/<case id>-<hash of the sources>/
        0-image.npy  1-label.npy  ...  case.json   (one .npy per array, other values as JSON)

The source hash covers each file's path, size and modification time (other values of the case as
they are, arrays by content): a changed file gives a new entry and the stale one is deleted; a
changed setting gives a new folder. Entries are written atomically; delete the cache at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from labkit.io import atomic_dir, atomic_write_text

_VALUES_FILE = "case.json"
CACHE_VERSION = "labkit-prepared-v1"  # bump when a transform's arithmetic changes


def chain_key(transforms) -> str:
    """A short hash of the transforms' reprs (their settings) and ``CACHE_VERSION``."""
    text = "\n".join([CACHE_VERSION] + [repr(t) for t in transforms])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def case_key(case: dict) -> str:
    """A short hash of the case's sources (see the module docstring)."""
    parts = []
    for key, value in sorted(case.items()):
        if isinstance(value, (str, os.PathLike)) and key != "id" and os.path.isfile(value):
            path = os.path.abspath(os.fspath(value))
            stat = os.stat(path)
            parts.append(f"{key}={path}:{stat.st_size}:{stat.st_mtime_ns}")
        elif isinstance(value, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
            parts.append(f"{key}=array{value.shape}{value.dtype}:{digest}")
        else:
            parts.append(f"{key}={value!r}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:80] or "case"


class CaseCache:
    """The cache folder of one transform chain under ``root`` (``labkit.paths.cache_root()``)."""

    def __init__(self, root, transforms):
        self.folder = Path(root) / "prepared" / chain_key(transforms)
        self._description = "\n".join(repr(t) for t in transforms) + "\n"

    def path(self, case: dict) -> Path:
        return self.folder / f"{_safe(str(case.get('id')))}-{case_key(case)}"

    def load(self, case: dict) -> dict | None:
        """The prepared case, or None when absent or unreadable (then it is prepared again)."""
        path = self.path(case)
        try:
            text = (path / _VALUES_FILE).read_text(encoding="utf-8")
            record = json.loads(text, object_hook=_from_json)
            prepared = record["values"]
            for key, name in record["arrays"].items():
                prepared[key] = np.load(path / name, allow_pickle=False)
            return prepared
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, case: dict, prepared: dict) -> None:
        """Store ``prepared`` (atomically) and delete older entries of the same case."""
        path = self.path(case)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            description = self.folder / "transforms.txt"
            if not description.exists():
                atomic_write_text(description, self._description)
            arrays = {key: value for key, value in prepared.items() if isinstance(value, np.ndarray)}
            names = {key: f"{index}-{_safe(str(key))}.npy" for index, key in enumerate(arrays)}
            rest = {key: value for key, value in prepared.items() if key not in arrays}
            if path.exists():  # only after a failed load: a damaged or incomplete entry
                shutil.rmtree(path, ignore_errors=True)
            with atomic_dir(path) as temporary:
                for key, array in arrays.items():
                    np.save(temporary / names[key], array, allow_pickle=False)
                (temporary / _VALUES_FILE).write_text(
                    json.dumps({"arrays": names, "values": _to_json(rest)}), encoding="utf-8")
            for old in self.folder.glob(f"{_safe(str(case.get('id')))}-*"):  # older sources
                if old != path and old.is_dir() and len(old.name) == len(path.name):  # not "c1-x" of "c1"
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as error:
            if (path / _VALUES_FILE).exists():
                return  # another process stored the same entry first
            warnings.warn(f"{self.folder}: could not write the cache ({error}); continuing "
                          "without it (set LABKIT_CACHE to a writable folder)", stacklevel=2)


def _to_json(value):
    """``value`` with arrays, tuples, paths and numpy scalars in a form JSON keeps."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _from_json(record: dict):
    """The ``json.loads`` object hook that undoes :func:`_to_json` (arrays and tuples back)."""
    if "__ndarray__" in record:
        return np.array(record["__ndarray__"], dtype=np.dtype(record["dtype"]))
    return tuple(record["__tuple__"]) if "__tuple__" in record else record
