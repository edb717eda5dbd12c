"""Where data, caches and run outputs live (``LABKIT_DATA``, ``LABKIT_RUNS``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROSTATE_DIR = "Task05_Prostate"
LUNG_DIR = "MontgomerySet"
SYNTHETIC_MARKER = "SYNTHETIC.txt"


def project_root() -> Path:
    """The course checkout holding this labkit (its ``pyproject.toml``), else the current folder.

    Notebooks run with ``notebooks/`` as their working folder, so ``./data`` there would miss the
    course's ``data/``; defaults are taken from the checkout instead.
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "notebooks").is_dir():
        return checkout
    return Path.cwd()


def data_root() -> Path:
    """The data root: ``$LABKIT_DATA``, else ``data/`` in the course checkout."""
    env = os.environ.get("LABKIT_DATA")
    return Path(env).expanduser().resolve() if env else project_root() / "data"


def runs_root() -> Path:
    """Where run folders (checkpoints, ``metrics.json``) go: ``$LABKIT_RUNS``, else ``runs/`` in the checkout."""
    env = os.environ.get("LABKIT_RUNS")
    return Path(env).expanduser().resolve() if env else project_root() / "runs"


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
    """A stable run folder ``<runs>/<lab>-<name>``, created if needed: a notebook restarted after
    a crash finds its checkpoints again."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{lab}-{name}").strip("-")
    path = (root or runs_root()) / safe
    path.mkdir(parents=True, exist_ok=True)
    return path
