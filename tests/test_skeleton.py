"""The course skeleton: light imports, profile choice, environment.yml in step with pyproject, make targets."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from labkit import profiles

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, when installed
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
LIGHT_MODULES = ("labkit", "labkit.data", "labkit.viz", "labkit.metrics")
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")
ENVIRONMENT_EXTRAS = ("torch", "tf-gpu", "dev")  # what environment.yml installs besides the core


# ---------------------------------------------------------------- imports

def test_labkit_imports_no_framework():
    present = [name for name in LIGHT_MODULES if importlib.util.find_spec(name) is not None]
    code = (f"import importlib, json, sys\nfor name in {present!r}: importlib.import_module(name)\n"
            f"print(json.dumps(sorted(name for name in {FRAMEWORKS!r} if name in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {', '.join(present)} loaded {', '.join(loaded)}"


# ---------------------------------------------------------------- profiles

@pytest.mark.parametrize("name", profiles.PROFILE_NAMES)
def test_profile_follows_environment_variable(monkeypatch, name):
    monkeypatch.setenv("LABKIT_PROFILE", name.upper())
    assert profiles.choose_profile_name() == (name, "set by LABKIT_PROFILE")
    assert profiles.get_profile().name == name


def test_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "laptop")
    with pytest.raises(ValueError, match="choose one of smoke, cpu, gpu"):
        profiles.get_profile()


@pytest.mark.parametrize("gpu, expected", [(True, "gpu"), (False, "cpu")])
def test_profile_follows_hardware_without_variable(monkeypatch, gpu, expected):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "gpu_visible", lambda: gpu)
    assert profiles.choose_profile_name()[0] == expected
    assert profiles.get_profile().name == expected


def test_hidden_gpus_count_as_none(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert profiles.gpu_visible() is False


def test_profiles_grow_from_smoke_to_gpu():
    sizes = [profiles.get_profile(name) for name in ("smoke", "cpu", "gpu")]
    volumes = [_product(profile.vnet.image_size) for profile in sizes]
    areas = [_product(profile.cfcm.image_size) for profile in sizes]
    assert volumes == sorted(volumes) and areas == sorted(areas)


def _product(values) -> int:
    result = 1
    for value in values:
        result *= value
    return result


# ---------------------------------------------------------------- environment.yml vs pyproject.toml

def _key(text: str) -> tuple[str, frozenset, str]:
    requirement = Requirement(text)
    name = re.sub(r"[-_.]+", "-", requirement.name).lower()
    return name, frozenset(requirement.extras), str(requirement.specifier)


def read_pyproject() -> dict:
    reader = tomllib or pytest.importorskip("tomli", reason="Python 3.10 needs tomli to read pyproject.toml")
    return reader.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict:
    project = read_pyproject()["project"]
    texts = list(project["dependencies"])
    for extra in ENVIRONMENT_EXTRAS:
        texts += project["optional-dependencies"][extra]
    return {_key(text)[0]: _key(text) for text in texts}


def environment_requirements() -> tuple[dict, list[str], list[str]]:
    """(requirements by name, conda-only entries such as python/pip, editable installs)."""
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    requirements, conda_only, editable = {}, [], []
    for entry in environment["dependencies"]:
        entries = entry["pip"] if isinstance(entry, dict) else [entry]
        for text in entries:
            if text.startswith("-e "):
                editable.append(text[3:].strip())
            elif re.match(r"^(python|pip)\b(=|$)", text):
                conda_only.append(text)
            else:
                key = _key(text)
                assert key[0] not in requirements, f"environment.yml lists {key[0]} twice"
                requirements[key[0]] = key
    return requirements, conda_only, editable


def test_environment_yml_matches_pyproject():
    expected = pyproject_requirements()
    listed, _, _ = environment_requirements()
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))
    changed = sorted(f"{name}: pyproject {expected[name][2] or 'any'} vs environment.yml "
                     f"{listed[name][2] or 'any'}" for name in set(expected) & set(listed)
                     if expected[name] != listed[name])
    assert not (missing or extra or changed), (
        f"environment.yml drifted from pyproject.toml: missing {missing}, not in pyproject {extra}, "
        f"different {changed}")


def test_environment_yml_pins_python_and_installs_labkit():
    _, conda_only, editable = environment_requirements()
    assert "python=3.11" in conda_only and "pip" in conda_only
    assert editable == [f".[{','.join(ENVIRONMENT_EXTRAS)}]"]
    requires = read_pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains("3.11")


# ---------------------------------------------------------------- Makefile

@pytest.mark.parametrize("target", ["data", "lab", "test", "run", "student", "bench", "export",
                                    "refresh-checks", "test-gpu"])
def test_makefile_has_target(target):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"no `make {target}`"


# ---------------------------------------------------------------- CI workflows

def _workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def _steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def test_cpu_workflow_runs_make_test_on_a_hosted_runner():
    workflow = _workflow("notebooks-cpu.yml")
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert any(step.get("run", "").startswith("make test") for step in job["steps"])


def test_gpu_workflow_restores_data_runs_doctor_and_uploads_metrics():
    workflow = _workflow("notebooks-gpu.yml")
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    steps = _steps(workflow)
    runs = [step.get("run", "") for step in steps]
    uses = [step.get("uses", "") for step in steps]
    order = [next(i for i, text in enumerate(runs) if needle in text)
             for needle in ("checksum=", "labkit doctor", "make test-gpu")]
    restore = next(i for i, action in enumerate(uses) if action.startswith("actions/cache/restore"))
    assert order[0] < restore < order[1] < order[2]
    assert "steps.data-key.outputs.key" in steps[restore]["with"]["key"]
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "runs/**/metrics.json"


@pytest.mark.parametrize("script", ["fetch_prostate.py", "fetch_montgomery.py"])
def test_gpu_cache_key_sees_each_dataset_checksum(script):
    """The workflow keys the data cache on the `checksum="<hex>"` line of each fetch script."""
    text = (ROOT / "data_scripts" / script).read_text()
    assert len(re.findall(r'checksum="[0-9a-fA-F]+"', text)) == 1
