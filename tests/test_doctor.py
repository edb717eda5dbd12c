"""``python -m labkit doctor`` tells the truth on this CPU-only machine and says how to fix problems."""

from __future__ import annotations

import json

import pytest

from labkit import doctor, profiles
from labkit.paths import SYNTHETIC_MARKER

needs_cpu_only = pytest.mark.skipif(profiles.gpu_visible(), reason="these facts hold on a machine without GPU")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("LABKIT_DATA", str(root))
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    return root


def make_dataset(root, name, synthetic):
    folder = root / name
    folder.mkdir(parents=True)
    if synthetic:
        (folder / SYNTHETIC_MARKER).write_text("made by make data\n")
    return folder


def test_missing_data_fails_with_a_fix(data_root, capsys):
    assert doctor.main(["--brief"]) == 1
    out = capsys.readouterr().out
    assert f"no prostate data found in {data_root / 'Task05_Prostate'}" in out
    assert f"no lung data found in {data_root / 'MontgomerySet'}" in out
    assert "fix: run `make data`" in out and "fetch_montgomery.py" in out


@needs_cpu_only
def test_synthetic_data_is_reported_as_synthetic(data_root, capsys):
    make_dataset(data_root, "Task05_Prostate", synthetic=True)
    make_dataset(data_root, "MontgomerySet", synthetic=True)
    assert doctor.main(["--brief"]) == 0
    out = capsys.readouterr().out
    assert "prostate    synthetic" in out and "lung        synthetic" in out
    assert "profile       cpu  (no GPU found)" in out
    assert "All good" in out


def test_real_data_is_reported_as_real(data_root):
    make_dataset(data_root, "Task05_Prostate", synthetic=False)
    make_dataset(data_root, "MontgomerySet", synthetic=True)
    facts = doctor.examine(probe_frameworks=False).facts
    assert facts["data_prostate"]["source"] == "real"
    assert facts["data_lung"]["source"] == "synthetic"


@needs_cpu_only
def test_json_mode(data_root, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    make_dataset(data_root, "Task05_Prostate", synthetic=True)
    assert doctor.main(["--brief", "--json"]) == 1  # the lung set is missing
    report = json.loads(capsys.readouterr().out)
    facts = report["facts"]
    assert facts["gpu_visible"] is False
    assert facts["profile"] == {"name": "smoke", "why": "set by LABKIT_PROFILE"}
    assert facts["data_root"] == str(data_root)
    assert facts["data_prostate"]["source"] == "synthetic"
    assert [what for what, _ in report["problems"]] == [f"no lung data found in {data_root / 'MontgomerySet'}"]
    assert facts["free_disk_gb"] > 0


def test_bad_profile_variable_is_a_problem(data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "fast")
    problems = doctor.examine(probe_frameworks=False).problems
    assert any("LABKIT_PROFILE='fast' is not a profile" in what and "unset LABKIT_PROFILE" in fix
               for what, fix in problems)


def test_missing_widget_extension_is_a_problem(data_root, monkeypatch):
    real_version = doctor._version
    monkeypatch.setattr(doctor, "_version",
                        lambda name: None if name == "jupyterlab_widgets" else real_version(name))
    problems = doctor.examine(probe_frameworks=False).problems
    assert any("widgets extension is missing" in what and "jupyterlab_widgets" in fix for what, fix in problems)


def _fake_probes(monkeypatch, torch_answer, tf_answer, gpu):
    monkeypatch.setattr(doctor, "_probe", lambda code, timeout=180: torch_answer if "torch" in code else tf_answer)
    monkeypatch.setattr(doctor.profiles, "gpu_visible", lambda: gpu)
    monkeypatch.setattr(doctor, "_version", lambda name: "1.0")


def test_cuda_torch_on_a_machine_without_gpu_is_a_problem(data_root, monkeypatch):
    _fake_probes(monkeypatch, {"cuda_build": "12.8", "gpus": []}, {"cuda_build": False, "gpus": []}, gpu=False)
    problems = doctor.examine().problems
    assert any("CUDA build" in what and "download.pytorch.org/whl/cpu" in fix for what, fix in problems)


def test_gpu_that_tensorflow_cannot_see_is_a_problem(data_root, monkeypatch):
    _fake_probes(monkeypatch, {"cuda_build": "12.8", "gpus": ["H100"]}, {"cuda_build": False, "gpus": []},
                 gpu=True)
    problems = doctor.examine().problems
    assert any("TensorFlow does not see it" in what and "tensorflow[and-cuda]" in fix for what, fix in problems)
    assert not any("PyTorch" in what for what, _ in problems)


def test_framework_that_does_not_import_is_a_problem(data_root, monkeypatch):
    _fake_probes(monkeypatch, "ImportError: libcudart.so.12: cannot open shared object file",
                 {"cuda_build": False, "gpus": []}, gpu=False)
    problems = doctor.examine().problems
    assert any("PyTorch is installed but does not import: ImportError" in what for what, _ in problems)


@needs_cpu_only
def test_torch_probe_tells_the_truth_here():
    answer = doctor._probe(doctor._TORCH_PROBE)
    assert answer == {"cuda_build": None, "gpus": []}, answer
