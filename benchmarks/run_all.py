"""Run the benchmarks side by side and write ``latest.json``, ``latest.md`` and the learning curves.

    .venv/bin/python benchmarks/run_all.py --out benchmarks/results          # everything (make bench)
    .venv/bin/python benchmarks/run_all.py --only data --repeats 2           # one section
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench          # tiny sizes (the test)
    .venv/bin/python benchmarks/run_all.py --only notebooks --notebooks smoke # smoke notebooks only

Sections (each in its own process, so PyTorch and TensorFlow never share one): ``data``,
``vnet``, ``cfcm``, ``gpu``, ``threads``, ``notebooks`` (whole notebooks as shipped, board on and
headless; their main runs give the learning curves). With ``--only``, the other sections of an
earlier ``latest.json`` from the same machine and mode are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPOSITORY, log, machine_info, write_json  # noqa: E402

# section -> [(part name, script, extra config)]; a section of several parts runs each alone
SECTIONS = {
    "data": [("data", "bench_data.py", {})],
    "vnet": [("vnet", "bench_vnet.py", {})],
    "cfcm": [("cfcm", "bench_cfcm.py", {})],
    "gpu": [("gpu", "bench_gpu.py", {})],
    "threads": [("threads", "bench_threads.py", {})],
    "notebooks": [("notebooks", "bench_notebooks.py", {})],
}
DEFAULT_REPEATS = {"data": 5, "vnet": 2, "cfcm": 5, "gpu": 10}
SECTION_TIMEOUT_S = 3 * 3600


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--only", action="append", default=[],
                        help=f"sections to run, comma-separated ({', '.join(SECTIONS)}); repeatable")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness runs")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per variant (default per section: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPEATS.items()) + ")")
    parser.add_argument("--notebooks", default="smoke,cpu",
                        help="profiles whose notebooks are timed, comma-separated (default smoke,cpu)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="data root holding Task05_Prostate and MontgomerySet (default $LABKIT_DATA)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite latest.md and the PNG from --out's latest.json")
    args = parser.parse_args(argv)
    args.sections = _chosen_sections(parser, args.only)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _chosen_sections(parser, only: list[str]) -> list[str]:
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names] if names else list(SECTIONS)


def section_config(name: str, args) -> dict:
    """The JSON config one section script receives."""
    config = {"quick": args.quick}
    if args.repeats is not None:
        config["repeats"] = args.repeats
    elif name in DEFAULT_REPEATS and not args.quick:
        config["repeats"] = DEFAULT_REPEATS[name]
    elif args.quick:
        config["repeats"] = 1
    if args.data_root is not None:
        config["data_root"] = str(args.data_root.resolve())
    if name == "notebooks":
        config["profiles"] = [p.strip() for p in args.notebooks.split(",") if p.strip()]
    return config


def run_part(script: str, config: dict) -> dict:
    """Run one section script in a fresh process; its result, or why there is none."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1",
                       TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if config.get("data_root"):
        environment["LABKIT_DATA"] = config["data_root"]
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, str(HERE / script), "--config", json.dumps(config),
                   "--result", str(result_path)]
        try:
            done = subprocess.run(command, cwd=REPOSITORY, env=environment, timeout=SECTION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"{script} ran past {SECTION_TIMEOUT_S} s"}
        if not result_path.exists():
            return {"status": "failed", "error": f"{script} exited with status {done.returncode} "
                                                 "without a result (see the log above)"}
        return json.loads(result_path.read_text(encoding="utf-8"))


def run_section(name: str, args) -> dict:
    parts = SECTIONS[name]
    config = section_config(name, args)
    if len(parts) == 1:
        _, script, extra = parts[0]
        return run_part(script, dict(config, **extra))
    results = {part: run_part(script, dict(config, **extra)) for part, script, extra in parts}
    statuses = {result.get("status") for result in results.values()}
    status = "measured" if "measured" in statuses else statuses.pop() if len(statuses) == 1 else "failed"
    return {"status": status, "parts": results,
            "measured_at": max(r.get("measured_at", "") for r in results.values()),
            "section_wall_s": round(sum(r.get("section_wall_s", 0) for r in results.values()), 1)}


def _earlier_sections(out: Path, machine: dict, quick: bool) -> dict:
    """Sections of an earlier ``latest.json`` measured on this machine in the same mode."""
    path = out / "latest.json"
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same_machine = all(earlier.get("machine", {}).get(key) == machine.get(key)
                       for key in ("cpu", "cores", "gpus"))
    if not same_machine or bool(earlier.get("quick")) != quick:
        return {}
    return earlier.get("sections", {})


def write_reports(out: Path, results: dict) -> None:
    """``latest.json`` (unless it is the source), ``latest.md`` and ``learning_curves.png``."""
    from report import markdown, plot_learning_curves

    from labkit.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "latest.json", results)
    atomic_write_text(out / "latest.md", markdown(results))
    plot_learning_curves(results, out / "learning_curves.png")


def main(argv=None) -> int:
    args = parse_arguments(argv)
    if args.render:
        results = json.loads((args.out / "latest.json").read_text(encoding="utf-8"))
        write_reports(args.out, results)
        log(f"rewrote {args.out / 'latest.md'} and learning_curves.png")
        return 0
    started = time.perf_counter()
    machine = machine_info()
    sections = _earlier_sections(args.out, machine, args.quick) if len(args.sections) < len(SECTIONS) else {}
    for name in args.sections:
        log(f"=== section {name} ===")
        sections[name] = run_section(name, args)
        log(f"=== section {name}: {sections[name].get('status')} "
            f"({sections[name].get('section_wall_s', '?')} s) ===")
    results = {
        "machine": machine, "quick": args.quick, "sections": {k: sections[k] for k in SECTIONS if k in sections},
        "command": " ".join(["benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_reports(args.out, results)
    log(f"wrote {args.out / 'latest.json'}, latest.md, learning_curves.png "
        f"in {results['wall_time_s']:.0f} s")
    failed = [name for name in args.sections if sections[name].get("status") == "failed"]
    if failed:
        log(f"failed sections: {', '.join(failed)} (their errors are in latest.md)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
