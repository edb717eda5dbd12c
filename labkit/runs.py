"""Run folders and ``metrics.json``: what every training run leaves behind.

Every run writes ``<LABKIT_RUNS>/<lab>-<name>/metrics.json`` with at least the keys in
:data:`REQUIRED_KEYS`, so instructors and CI can collect results without opening notebooks.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from labkit import __version__
from labkit.io import atomic_write_json
from labkit.paths import run_dir

REQUIRED_KEYS = ("lab", "profile", "device", "data_source", "epochs", "wall_time_s",
                 "train_dice", "validation_dice", "test_dice", "per_case")


def write_metrics(folder: str | Path, metrics: dict) -> Path:
    """Validate and atomically write ``metrics.json`` into ``folder``; returns its path.

    Raises:
        ValueError: when a required key is missing (names the keys).
    """
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"metrics.json for {folder} is missing {', '.join(missing)}")
    record = dict(metrics)
    record.setdefault("written_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record.setdefault("labkit_version", __version__)
    record.setdefault("python", platform.python_version())
    return atomic_write_json(Path(folder) / "metrics.json", record)


__all__ = ["REQUIRED_KEYS", "run_dir", "write_metrics"]
