"""``python -m labkit doctor``: is this machine ready for the labs?

Prints versions, GPUs as each framework sees them, where the data is, which profile will be
chosen and the free disk; exits non-zero with a plain-English fix when something is broken.
Frameworks are probed in child processes, so a broken install cannot crash the doctor.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from labkit import paths, profiles

PACKAGES = ("torch", "tensorflow", "tensorflow-cpu", "keras", "jupyterlab", "ipywidgets",
            "jupyterlab_widgets", "nibabel", "numpy", "scipy", "matplotlib")

_TORCH_PROBE = (
    "import json, torch\n"
    "print(json.dumps({'cuda_build': torch.version.cuda, 'gpus': "
    "[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
    "if torch.cuda.is_available() else []}))"
)
_TF_PROBE = (
    "import os, json\nos.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')\nimport tensorflow as tf\n"
    "print(json.dumps({'cuda_build': bool(tf.test.is_built_with_cuda()), 'gpus': "
    "[d.name for d in tf.config.list_physical_devices('GPU')]}))"
)


@dataclass
class Report:
    facts: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)  # (what, fix)
    warnings: list = field(default_factory=list)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append((what, fix))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _probe(code: str, timeout: int = 180) -> dict | str:
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit code {out.returncode}"
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "no answer"


def _check_frameworks(report: Report, gpu: bool) -> None:
    versions = report.facts["versions"]
    if versions.get("torch"):
        torch_info = _probe(_TORCH_PROBE)
        report.facts["torch"] = torch_info
        if isinstance(torch_info, str):
            report.problem(f"PyTorch is installed but does not import: {torch_info}",
                           "reinstall it: .venv/bin/pip install --force-reinstall torch==2.13.0")
        elif torch_info["cuda_build"] and not gpu:
            report.problem(
                f"PyTorch is a CUDA build (CUDA {torch_info['cuda_build']}) but this machine has no GPU: "
                "several GB wasted and slower start-up",
                "install the CPU build: .venv/bin/pip install torch==2.13.0 "
                "--index-url https://download.pytorch.org/whl/cpu")
        elif gpu and not torch_info["gpus"]:
            report.problem("an NVIDIA GPU is visible but PyTorch cannot use it",
                           "install a CUDA build of torch 2.13.0 matching your driver (see pytorch.org)")
    else:
        report.problem("PyTorch is not installed (Lab 1 needs it)", "run `make lab`, or pip install -e '.[torch]'")
    if versions.get("tensorflow") or versions.get("tensorflow-cpu"):
        tf_info = _probe(_TF_PROBE)
        report.facts["tensorflow"] = tf_info
        if isinstance(tf_info, str):
            report.problem(f"TensorFlow is installed but does not import: {tf_info}",
                           "reinstall it: .venv/bin/pip install --force-reinstall tensorflow-cpu==2.21.0")
        elif gpu and not tf_info["gpus"]:
            report.problem("an NVIDIA GPU is visible but TensorFlow does not see it",
                           "install the CUDA build: .venv/bin/pip install 'tensorflow[and-cuda]==2.21.0' "
                           "(and uninstall tensorflow-cpu)")
    else:
        report.problem("TensorFlow is not installed (Lab 2 needs it)", "run `make lab`, or pip install -e '.[tf]'")


def examine(probe_frameworks: bool = True) -> Report:
    """Collect the facts and problems (no printing)."""
    report = Report()
    report.facts["python"] = platform.python_version()
    report.facts["platform"] = platform.platform()
    report.facts["versions"] = {name: _version(name) for name in PACKAGES}
    if sys.version_info < (3, 10):
        report.problem(f"Python {platform.python_version()} is too old", "use Python 3.10 or newer")
    versions = report.facts["versions"]
    if not versions.get("jupyterlab_widgets") or not versions.get("ipywidgets"):
        report.problem("the Jupyter widgets extension is missing: viewers and live plots will not show",
                       ".venv/bin/pip install 'ipywidgets>=8.1,<9' jupyterlab_widgets, then reload the browser tab")

    gpu = profiles.gpu_visible()
    report.facts["gpu_visible"] = gpu
    if probe_frameworks:
        _check_frameworks(report, gpu)

    root = paths.data_root()
    report.facts["data_root"] = str(root)
    for label, folder in (("prostate", paths.prostate_dir(root)), ("lung", paths.lung_dir(root))):
        source = paths.data_source(folder)
        report.facts[f"data_{label}"] = {"path": str(folder), "source": source}
        if source == "missing":
            report.problem(f"no {label} data found in {folder}",
                           "run `make data` for the synthetic set, or fetch the real set "
                           f"(python data_scripts/fetch_{'prostate' if label == 'prostate' else 'montgomery'}.py)")
    try:
        name, why = profiles.choose_profile_name()
        report.facts["profile"] = {"name": name, "why": why}
    except ValueError as error:
        report.problem(str(error), "unset LABKIT_PROFILE or set it to smoke, cpu or gpu")
    existing = next((p for p in [root, *root.parents] if p.exists()), Path("/"))
    free_gb = shutil.disk_usage(existing).free / 1e9
    report.facts["free_disk_gb"] = round(free_gb, 1)
    if free_gb < 2:
        report.problem(f"only {free_gb:.1f} GB free under {existing}",
                       "free some disk: the real prostate set needs ~1.5 GB, Montgomery ~0.6 GB, plus caches")
    return report


def render(report: Report) -> str:
    f = report.facts
    v = f["versions"]
    lines = [f"Python        {f['python']}  ({f['platform']})"]
    for name in ("torch", "tensorflow", "tensorflow-cpu", "keras", "jupyterlab", "ipywidgets",
                 "jupyterlab_widgets"):
        lines.append(f"{name:<20}{v.get(name) or 'not installed'}")
    lines.append(f"GPU visible   {'yes' if f['gpu_visible'] else 'no'}")
    for fw in ("torch", "tensorflow"):
        info = f.get(fw)
        if isinstance(info, dict):
            lines.append(f"{fw} sees     {', '.join(info['gpus']) or 'no GPU (runs on the CPU)'}")
    lines.append(f"data root     {f['data_root']}")
    for label in ("prostate", "lung"):
        d = f[f"data_{label}"]
        lines.append(f"  {label:<10}  {d['source']:<9}  {d['path']}")
    if "profile" in f:
        lines.append(f"profile       {f['profile']['name']}  ({f['profile']['why']})")
    lines.append(f"free disk     {f['free_disk_gb']} GB")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if report.problems:
        lines.append("")
        lines.append(f"{len(report.problems)} problem(s):")
        for what, fix in report.problems:
            lines.append(f"  - {what}\n    fix: {fix}")
    else:
        lines.append("\nAll good: start with `make lab`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labkit doctor", description=__doc__)
    parser.add_argument("--brief", action="store_true", help="skip the (slow) framework probes")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    report = examine(probe_frameworks=not args.brief)
    if args.json:
        print(json.dumps({"facts": report.facts, "problems": report.problems}, indent=2))
    else:
        print(render(report))
    return 1 if report.problems else 0
