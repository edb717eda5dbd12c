"""``python -m labkit doctor``: is this machine ready for the labs?

Prints versions, GPUs as each framework sees them, where the data is, which profile will be
chosen and the free disk; exits non-zero with a plain-English fix when something is broken.
Frameworks are probed in child processes, so a broken install cannot crash the doctor.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from labkit import paths, profiles

SHOWN = ("torch", "tensorflow", "tensorflow-cpu", "keras", "jupyterlab", "ipywidgets",
         "jupyterlab_widgets")
PACKAGES = (*SHOWN, "nibabel", "numpy", "scipy", "matplotlib")
_TORCH_PROBE = ("import json, torch; print(json.dumps({'cuda_build': torch.version.cuda, 'gpus': "
                "[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
                "if torch.cuda.is_available() else []}))")
_TF_PROBE = ("import os, json; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3'); "
             "import tensorflow as tf; print(json.dumps({'cuda_build': "
             "bool(tf.test.is_built_with_cuda()), 'gpus': "
             "[d.name for d in tf.config.list_physical_devices('GPU')]}))")
# (facts key, packages, name, lab, extra, probe, pinned package, fix when it misses the GPU)
FRAMEWORKS = (
    ("torch", ("torch",), "PyTorch", "Lab 1", "torch", _TORCH_PROBE, "torch==2.13.0",
     "install a CUDA build of torch 2.13.0 matching your driver (see pytorch.org)"),
    ("tensorflow", ("tensorflow", "tensorflow-cpu"), "TensorFlow", "Lab 2", "tf", _TF_PROBE,
     "tensorflow-cpu==2.21.0", "install the CUDA build: .venv/bin/pip install "
     "'tensorflow[and-cuda]==2.21.0' (and uninstall tensorflow-cpu)"),
)


class Report(NamedTuple):
    """What :func:`examine` found: JSON-able ``facts`` and ``problems`` as (what, fix) pairs."""

    facts: dict
    problems: list


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _probe(code: str, timeout: int = 180) -> dict | str:
    """Run ``code`` in a fresh Python: the JSON it prints last, or the last line of its error."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    except (ValueError, IndexError):
        return ([line for line in out.stderr.splitlines() if line.strip()]
                or [f"no answer (exit code {out.returncode})"])[-1]


def examine(probe_frameworks: bool = True) -> Report:
    """Collect the facts and problems (no printing)."""
    root = paths.data_root()
    report = Report({"python": platform.python_version(), "platform": platform.platform(),
                     "versions": {name: _version(name) for name in PACKAGES},
                     "gpu_visible": profiles.gpu_visible(), "data_root": str(root)}, [])
    facts = report.facts

    def problem(what: str, fix: str) -> None:
        report.problems.append((what, fix))

    versions, gpu = facts["versions"], facts["gpu_visible"]
    if sys.version_info < (3, 10):
        problem(f"Python {facts['python']} is too old", "use Python 3.10 or newer")
    if not versions["jupyterlab_widgets"] or not versions["ipywidgets"]:
        problem("the Jupyter widgets extension is missing: viewers and live plots will not show",
                ".venv/bin/pip install 'ipywidgets>=8.1,<9' jupyterlab_widgets, then reload the "
                "browser tab")
    for key, packages, name, lab, extra, probe, pinned, gpu_fix in FRAMEWORKS:
        if not probe_frameworks:
            break
        if not any(versions.get(package) for package in packages):
            problem(f"{name} is not installed ({lab} needs it)",
                    f"run `make lab`, or pip install -e '.[{extra}]'")
            continue
        info = facts[key] = _probe(probe)
        if isinstance(info, str):
            problem(f"{name} is installed but does not import: {info}",
                    f"reinstall it: .venv/bin/pip install --force-reinstall {pinned}")
        elif key == "torch" and info["cuda_build"] and not gpu:
            problem(f"PyTorch is a CUDA build (CUDA {info['cuda_build']}) but this machine has "
                    "no GPU: several GB wasted and slower start-up", "install the CPU build: "
                    ".venv/bin/pip install torch==2.13.0 --index-url "
                    "https://download.pytorch.org/whl/cpu")
        elif gpu and not info["gpus"]:
            problem(f"an NVIDIA GPU is visible but {name} does not see it", gpu_fix)
    for label, folder, script in (("prostate", paths.prostate_dir(root), "prostate"),
                                  ("lung", paths.lung_dir(root), "montgomery")):
        facts[f"data_{label}"] = {"path": str(folder), "source": paths.data_source(folder)}
        if facts[f"data_{label}"]["source"] == "missing":
            problem(f"no {label} data found in {folder}", "run `make data` for the synthetic "
                    f"set, or fetch the real set (python data_scripts/fetch_{script}.py)")
    try:
        name, why = profiles.choose_profile_name()
        facts["profile"] = {"name": name, "why": why}
    except ValueError as error:
        problem(str(error), "unset LABKIT_PROFILE or set it to smoke, cpu or gpu")
    existing = next((path for path in [root, *root.parents] if path.exists()), Path("/"))
    facts["free_disk_gb"] = round(shutil.disk_usage(existing).free / 1e9, 1)
    if facts["free_disk_gb"] < 2:
        problem(f"only {facts['free_disk_gb']:.1f} GB free under {existing}", "free some disk: "
                "the real prostate set needs ~1.5 GB, Montgomery ~0.6 GB, plus caches")
    return report


def render(report: Report) -> str:
    """The report as the text ``python -m labkit doctor`` prints."""
    facts = report.facts
    lines = [f"Python        {facts['python']}  ({facts['platform']})"]
    lines += [f"{name:<20}{facts['versions'][name] or 'not installed'}" for name in SHOWN]
    lines.append(f"GPU visible   {'yes' if facts['gpu_visible'] else 'no'}")
    lines += [f"{key} sees     {', '.join(facts[key]['gpus']) or 'no GPU (runs on the CPU)'}"
              for key in ("torch", "tensorflow") if isinstance(facts.get(key), dict)]
    lines.append(f"data root     {facts['data_root']}")
    for label in ("prostate", "lung"):
        lines.append(f"  {label:<10}  {facts[f'data_{label}']['source']:<9}  "
                     f"{facts[f'data_{label}']['path']}")
    if "profile" in facts:
        lines.append(f"profile       {facts['profile']['name']}  ({facts['profile']['why']})")
    lines.append(f"free disk     {facts['free_disk_gb']} GB")
    if not report.problems:
        return "\n".join([*lines, "\nAll good: start with `make lab`."])
    lines += ["", f"{len(report.problems)} problem(s):"]
    lines += [f"  - {what}\n    fix: {fix}" for what, fix in report.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report (or its JSON); 1 when there is a problem."""
    parser = argparse.ArgumentParser(prog="python -m labkit doctor", description=__doc__)
    parser.add_argument("--brief", action="store_true", help="skip the (slow) framework probes")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    report = examine(probe_frameworks=not args.brief)
    print(json.dumps({"facts": report.facts, "problems": report.problems}, indent=2) if args.json
          else render(report))
    return 1 if report.problems else 0
