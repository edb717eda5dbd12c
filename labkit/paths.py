"""Where data, caches and run outputs live (``LABKIT_DATA``, ``LABKIT_RUNS``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROSTATE_DIR = "Task05_Prostate"
LUNG_DIR = "MontgomerySet"
SYNTHETIC_MARKER = "SYNTHETIC.txt"


def data_root() -> Path:
    """The data root: ``$LABKIT_DATA`` or ``./data``."""
    return Path(os.environ.get("LABKIT_DATA") or "data").expanduser().resolve()


def runs_root() -> Path:
    """Where run folders (checkpoints, ``metrics.json``) go: ``$LABKIT_RUNS`` or ``./runs``."""
    return Path(os.environ.get("LABKIT_RUNS") or "runs").expanduser().resolve()


def cache_root() -> Path:
    """Disk cache of preprocessed cases: ``$LABKIT_CACHE`` or ``<data root>/.cache``."""
    env = os.environ.get("LABKIT_CACHE")
    return Path(env).expanduser().resolve() if env else data_root() / ".cache"


def prostate_dir(root: Path | None = None) -> Path:
    return (root or data_root()) / PROSTATE_DIR


def lung_dir(root: Path | None = None) -> Path:
    return (root or data_root()) / LUNG_DIR


def data_source(dataset_dir: Path) -> str:
    """``'real'``, ``'synthetic'`` (made by ``make data``) or ``'missing'``."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        return "missing"
    return "synthetic" if (dataset_dir / SYNTHETIC_MARKER).exists() else "real"


def run_dir(lab: str, name: str, root: Path | None = None) -> Path:
    """A stable run folder ``<runs>/<lab>-<name>``, created if needed.

    The same (lab, name) gives the same folder, so a notebook restarted after a crash finds
    its checkpoints again.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{lab}-{name}").strip("-")
    path = (root or runs_root()) / safe
    path.mkdir(parents=True, exist_ok=True)
    return path
