"""Shared benchmark plumbing: interleaved timing, peak memory, machine description, section I/O.

Every benchmark section is a script ``benchmarks/bench_<name>.py`` that ``run_all.py`` starts
in its own process (so PyTorch and TensorFlow never share one). The section reads its settings
from ``--config`` (JSON) and writes its result to ``--result`` (JSON), through
:func:`section_main`.

Timing rules used everywhere:
- the variants of one comparison run in the same process, *interleaved* (A, B, C, A, B, C ...),
  so a load spike from another user of the machine hits all of them alike;
- one untimed warm-up call per variant where it matters (JIT, allocator, file cache);
- results are reported as min and median seconds, and ratios use the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPOSITORY))

LIBRARIES = ("numpy", "scipy", "nibabel", "nilearn", "torch", "tensorflow", "tensorflow-cpu",
             "keras", "monai", "papermill", "nbclient", "labkit")


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def summarize(times: list[float]) -> dict:
    """``{'min_s', 'median_s', 'times_s'}`` of a list of durations in seconds."""
    if not times:
        raise ValueError("no timings to summarize")
    return {"min_s": min(times), "median_s": statistics.median(times),
            "times_s": [round(t, 6) for t in times]}


def compare(variants: dict, repeats: int, warmup: int = 1, memory: bool = True,
            before=None) -> dict:
    """Time several callables side by side, interleaved, in this process.

    Args:
        variants: ``{name: callable()}``; each call is one measured unit of work.
        repeats: timed calls per variant.
        warmup: untimed calls per variant before timing.
        memory: also record each variant's peak resident memory (see :class:`PeakMemory`).
        before: optional ``before(name)`` called, untimed, ahead of each timed call (to release
            what the previous call of that variant kept, so memory starts from a clean level).

    Returns:
        ``{name: {'min_s', 'median_s', 'times_s', 'peak_rss_mb'?}}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for function in variants.values():
            function()
    times = {name: [] for name in variants}
    peaks = {name: 0.0 for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            if before is not None:
                before(name)
            gc.collect()
            with PeakMemory(enabled=memory) as peak:
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], peak.peak_mb)
    result = {}
    for name in variants:
        result[name] = summarize(times[name])
        if memory:
            result[name]["peak_rss_mb"] = round(peaks[name], 1)
    return result


def ratio(slow: dict, fast: dict, key: str = "median_s") -> float | None:
    """How many times faster ``fast`` is than ``slow`` (``slow[key] / fast[key]``)."""
    if not slow or not fast or not fast.get(key):
        return None
    return round(slow[key] / fast[key], 2)


def speed_target(name: str, slow: dict, fast: dict, target: float, extra_ok: bool = True) -> dict:
    """A ">= target x" entry judged on the smaller of the median and the min ratio.

    On a shared machine other users only ever add time, so the two ratios bracket the truth;
    taking the smaller one never claims a target on the strength of one lucky run.
    """
    by_median, by_min = ratio(slow, fast), ratio(slow, fast, key="min_s")
    measured = None if by_median is None or by_min is None else min(by_median, by_min)
    return {"name": name, "target": f">= {target:g}x", "measured": measured, "unit": "x",
            "measured_median_ratio": by_median, "measured_min_ratio": by_min,
            "met": None if measured is None else bool(measured >= target and extra_ok)}


class PeakMemory:
    """Peak resident memory above the starting level, sampled in a background thread.

    ``peak_mb`` is this process's growth (what a variant keeps and allocates here; reading
    ``/proc/<pid>/statm`` costs microseconds, so sampling every ``interval`` seconds does not
    slow the measured code).

    Example:
        >>> with PeakMemory() as peak:
        ...     work()
        >>> peak.peak_mb
    """

    def __init__(self, interval: float = 0.01, enabled: bool = True):
        self.interval = interval
        self.enabled = enabled
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _size() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._top = max(self._top, self._size())
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.enabled:
            self._base = self._top = self._size()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._top = max(self._top, self._size())
            self.peak_mb = (self._top - self._base) / 2**20
        return False


# ----------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_names() -> list[str]:
    """NVIDIA GPUs listed by ``nvidia-smi -L`` (empty when there is none)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU")] \
        if out.returncode == 0 else []


def library_versions() -> dict:
    """Installed versions of the libraries the benchmarks touch (missing ones left out)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info() -> dict:
    """What the numbers were measured on."""
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
        load = [round(x, 2) for x in os.getloadavg()]
    except (ImportError, OSError):
        memory_gb, load = None, None
    return {"cpu": cpu_model(), "cores": usable_cores(), "logical_cpus": os.cpu_count(),
            "memory_gb": memory_gb, "load_average_at_start": load, "gpus": gpu_names(),
            "os": platform.platform(), "python": platform.python_version(),
            "libraries": library_versions()}


# ----------------------------------------------------------------------------------------------
# Section scripts
# ----------------------------------------------------------------------------------------------


def section_main(run, description: str) -> int:
    """Command line of one section script: ``--config JSON --result PATH``.

    ``run(config) -> dict`` does the work. The result (or the error that stopped it) is
    written to ``--result`` as JSON, atomically; the exit status is 0 either way unless the
    result file itself cannot be written, so ``run_all.py`` always gets a report.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="{}", help="section settings as JSON")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    config = json.loads(args.config)
    start = time.perf_counter()
    load_at_start = _load_average()
    try:
        result = run(config)
        result.setdefault("status", "measured")
    except Exception as error:  # report the failure in the results rather than crash the run
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = {"start": load_at_start, "end": _load_average()}
    result["section_wall_s"] = round(time.perf_counter() - start, 1)
    write_json(args.result, result)
    return 0


def _load_average() -> float | None:
    """The 1-minute load average (other users of a shared machine show up here)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_json(path, record) -> None:
    """Write ``record`` as JSON atomically (``labkit.io.atomic_write_json``)."""
    from labkit.io import atomic_write_json

    atomic_write_json(path, record)


def log(message: str) -> None:
    """One progress line on stderr (``run_all.py`` keeps it in its log)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
