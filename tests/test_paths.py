"""Where labkit looks for data and writes runs."""

import os
import subprocess
import sys
from pathlib import Path

from labkit import paths

CHECKOUT = Path(__file__).resolve().parents[1]


def test_env_variables_win(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("LABKIT_RUNS", str(tmp_path / "r"))
    assert paths.data_root() == tmp_path / "d"
    assert paths.runs_root() == tmp_path / "r"


def test_defaults_point_into_the_checkout_from_any_working_folder(tmp_path):
    """A notebook runs in notebooks/: its ./data is not the course's data folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_DATA", "LABKIT_RUNS")}
    code = "import labkit.paths as p; print(p.data_root()); print(p.runs_root())"
    for cwd in (CHECKOUT / "notebooks", tmp_path):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == [str(CHECKOUT / "data"), str(CHECKOUT / "runs")]


def test_data_source_tells_real_synthetic_and_missing(tmp_path):
    assert paths.data_source(tmp_path / "nothing") == "missing"
    (tmp_path / "real").mkdir()
    assert paths.data_source(tmp_path / "real") == "real"
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / paths.SYNTHETIC_MARKER).write_text("made by make data\n")
    assert paths.data_source(tmp_path / "synthetic") == "synthetic"


def test_run_dir_is_stable_and_safe(tmp_path):
    first = paths.run_dir("vnet", "cpu-my run/1", root=tmp_path)
    assert first == paths.run_dir("vnet", "cpu-my run/1", root=tmp_path)
    assert first.parent == tmp_path and first.is_dir()
    assert "/" not in first.name and " " not in first.name
