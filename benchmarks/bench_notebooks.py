"""Whole notebooks: wall time of each lab, per profile, executed headless with papermill.

Each notebook runs in its own ``python -m labkit.run_notebooks`` process (as ``make run`` does)
with run folders in a temporary ``LABKIT_RUNS``, so benchmark runs never resume or overwrite a
student's runs. The smoke profile always; the cpu profile (about 10 minutes per lab) only when
asked: ``run_all.py --notebooks smoke,cpu``.

    .venv/bin/python benchmarks/bench_notebooks.py --result /tmp/nb.json --config '{"profiles": ["smoke"]}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPOSITORY, log, section_main
from lab_code import NOTEBOOKS

TIMEOUT_S = {"smoke": 900, "cpu": 2400, "gpu": 36000}


def run(config: dict) -> dict:
    if config.get("quick") and not config.get("force"):
        return {"status": "not measured", "reason": "skipped by --quick (each notebook takes minutes)"}
    profiles = list(config.get("profiles", ["smoke"]))
    rows = []
    for profile in profiles:
        for notebook in NOTEBOOKS.values():
            log(f"notebooks: {notebook}, profile {profile}")
            rows.append(run_one(REPOSITORY / notebook, profile, config.get("data_root")))
    return {"profiles": profiles, "runs": rows,
            "not_measured": [p for p in ("smoke", "cpu") if p not in profiles]}


def run_one(notebook: Path, profile: str, data_root=None) -> dict:
    """Execute one notebook in a fresh process; its wall time and the metrics it wrote."""
    row = {"notebook": notebook.name, "profile": profile}
    if not notebook.exists():
        return dict(row, status="missing")
    with tempfile.TemporaryDirectory(prefix="labkit-bench-notebook-") as folder:
        environment = dict(os.environ, LABKIT_RUNS=str(Path(folder) / "runs"), LABKIT_HEADLESS="1")
        if data_root:
            environment["LABKIT_DATA"] = str(Path(data_root).resolve())
        command = [sys.executable, "-m", "labkit.run_notebooks", "--profile", profile, "--no-html",
                   "--out", str(Path(folder) / "out"), str(notebook)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True,
                                  text=True, timeout=TIMEOUT_S.get(profile, 3600))
        except subprocess.TimeoutExpired:
            return dict(row, status="timed out", wall_time_s=round(time.perf_counter() - start, 1))
        row["wall_time_s"] = round(time.perf_counter() - start, 1)
        row["status"] = "ok" if done.returncode == 0 else "failed"
        if done.returncode != 0:
            row["error"] = (done.stderr or done.stdout)[-1500:]
        row["metrics"] = _metrics(Path(folder) / "runs")
    return row


def _metrics(runs_folder: Path) -> list[dict]:
    """Headline numbers of every ``metrics.json`` the notebook wrote."""
    found = []
    for path in sorted(runs_folder.glob("*/metrics.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        found.append({key: record.get(key) for key in
                      ("lab", "profile", "epochs", "wall_time_s", "validation_dice", "test_dice")}
                     | {"run": path.parent.name})
    return found


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
