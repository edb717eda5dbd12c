"""The labs' own model code, as the benchmarks see it.

The notebooks are the single home of the V-Net and CFCM code; ``make export`` writes their
``export``-tagged cells to ``labkit/labs/vnet.py`` and ``labkit/labs/cfcm.py``. The benchmarks
use that module when it exists and otherwise run the notebook's export cells into a fresh
namespace, so they always measure what the students see.
"""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path

from common import REPOSITORY

NOTEBOOKS = {"vnet": "notebooks/01_vnet_prostate.ipynb", "cfcm": "notebooks/02_cfcm_lung.ipynb"}


class LabCodeMissing(RuntimeError):
    """Neither the exported module nor the notebook's export cells could be loaded."""


def load_lab(lab: str):
    """``(namespace, where it came from)`` of a lab's exported code.

    Raises:
        LabCodeMissing: with the reason, when neither source is usable yet.
    """
    reasons = []
    try:
        module = importlib.import_module(f"labkit.labs.{lab}")
        if _has_code(module):
            return module, f"labkit/labs/{lab}.py"
        reasons.append(f"labkit/labs/{lab}.py is empty")
    except ImportError as error:
        reasons.append(f"labkit.labs.{lab}: {error}")
    notebook = REPOSITORY / NOTEBOOKS[lab]
    if not notebook.exists():
        reasons.append(f"{NOTEBOOKS[lab]} does not exist")
        raise LabCodeMissing("; ".join(reasons))
    source = export_source(notebook)
    if not source.strip():
        reasons.append(f"{NOTEBOOKS[lab]} has no cell tagged 'export'")
        raise LabCodeMissing("; ".join(reasons))
    namespace = types.ModuleType(f"notebook_{lab}")
    exec(compile(source, str(notebook), "exec"), namespace.__dict__)  # noqa: S102 - our own notebook
    return namespace, f"{NOTEBOOKS[lab]} (export cells)"


def export_source(notebook: Path) -> str:
    """The concatenated source of a notebook's cells tagged ``export``."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    parts = []
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and "export" in tags:
            text = cell.get("source", "")
            parts.append(text if isinstance(text, str) else "".join(text))
    return "\n\n".join(parts)


def _has_code(module) -> bool:
    return any(not name.startswith("_") and isinstance(value, type)
               for name, value in vars(module).items())


def build_lab_vnet(namespace, n_filters: int, normalization: str = "groupnorm",
                   in_channels: int = 2, out_channels: int = 1):
    """The lab's V-Net, built with the keyword names its constructor uses."""
    import inspect

    cls = getattr(namespace, "VNet", None)
    if cls is None:
        raise LabCodeMissing("the lab's code defines no class named VNet")
    wanted = {"in_channels": in_channels, "n_channels": in_channels,
              "out_channels": out_channels, "n_classes": out_channels,
              "n_filters": n_filters, "normalization": normalization}
    parameters = inspect.signature(cls).parameters
    return cls(**{name: value for name, value in wanted.items() if name in parameters})


def vnet_augmentation() -> list:
    """Lab 1's per-batch augmentation, as its notebook builds it (flip, small affine, intensity)."""
    from labkit.data.transforms import RandomAffine, RandomFlip, RandomIntensity

    both = ["image", "label"]
    return [RandomFlip(both, axes=(0,)),
            RandomAffine(both, orders=(1, 0), degrees=10, scale=(0.9, 1.1)),
            RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.1, 0.1))]
