"""Shared fixtures: tiny synthetic data sets made once per test session (a few seconds).

``tiny_prostate_root`` and ``tiny_lung_root`` are data roots (the folder that holds
``Task05_Prostate`` / ``MontgomerySet``), in the official layouts, marked synthetic. Treat
them as read-only: copy a case into ``tmp_path`` before damaging it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_scripts"))
import phantoms  # noqa: E402

TINY_PROSTATE_CASES = 8
TINY_LUNG_CASES = 12


@pytest.fixture(scope="session")
def tiny_prostate_root(tmp_path_factory):
    """A data root with a tiny Task05_Prostate set (8 labelled, 2 test cases, ~40x40x11)."""
    root = tmp_path_factory.mktemp("tiny_prostate")
    phantoms.write_prostate_set(root / "Task05_Prostate", n_train=TINY_PROSTATE_CASES, n_test=2,
                                seed=1, geometry=phantoms.TINY_PROSTATE)
    return root


@pytest.fixture(scope="session")
def tiny_lung_root(tmp_path_factory):
    """A data root with a tiny MontgomerySet (12 chest X-rays, ~90 px)."""
    root = tmp_path_factory.mktemp("tiny_lung")
    phantoms.write_lung_set(root / "MontgomerySet", n_cases=TINY_LUNG_CASES, seed=1,
                            geometry=phantoms.TINY_LUNG)
    return root


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point ``LABKIT_CACHE`` at a fresh folder for one test; returns that folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LABKIT_CACHE", str(folder))
    return folder
