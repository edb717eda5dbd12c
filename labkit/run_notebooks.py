"""Run the labs headless and keep the results (``make run``).

Each notebook is executed with papermill (parameter ``PROFILE=<profile>``, kernel ``python3``,
working directory = the notebook's folder, ``LABKIT_HEADLESS=1`` unless ``--live``, ``LABKIT_DATA``
and ``LABKIT_RUNS`` made absolute from the current folder) and written to
``<out>/<name>.ipynb`` with an HTML copy ``<out>/<name>.html``. The wall time of each notebook
is printed. A notebook that fails is still written (its error is in the executed copy); the
command then exits non-zero naming the notebook and the cell.

Usage:
    python -m labkit.run_notebooks --profile cpu --out build notebooks/01_vnet_prostate.ipynb
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labkit import paths
from labkit.io import atomic_path, atomic_write_text
from labkit.notebook_tools import (
    NotebookError,
    describe_cell,
    for_each_notebook,
    read_notebook,
    tags_of,
)
from labkit.profiles import PROFILE_NAMES

KERNEL_NAME = "python3"


@dataclass
class RunResult:
    """What happened to one notebook."""

    notebook: Path
    executed: Path
    html: Path | None
    wall_time_s: float
    error: str | None = None


def pin_environment(profile: str, headless: bool = True) -> None:
    """Set what the kernels inherit: the profile, headless drawing, and absolute data/run roots.

    ``headless=False`` leaves the live board and progress bars on, as in JupyterLab (the
    benchmarks time both).

    The kernel runs in the notebook's folder, so a relative ``LABKIT_DATA`` / ``LABKIT_RUNS`` is
    resolved here, from the folder the command was started in (as ``make`` does), not from
    ``notebooks/``; unset, they are the course checkout's ``data/`` and ``runs/``.
    """
    os.environ["LABKIT_HEADLESS"] = "1" if headless else "0"
    os.environ["LABKIT_PROFILE"] = profile
    os.environ["LABKIT_DATA"] = str(paths.data_root())
    os.environ["LABKIT_RUNS"] = str(paths.runs_root())


def _original_cell_number(executed, cell_index: int) -> int:
    """The 0-based index in the source notebook (papermill inserts an ``injected-parameters`` cell)."""
    injected = sum("injected-parameters" in tags_of(cell) for cell in executed.cells[:cell_index])
    return cell_index - injected


def _describe_failure(error, executed_path: Path, notebook: Path) -> str:
    if not hasattr(error, "cell_index"):
        return f"{notebook} failed: {error}"
    executed = read_notebook(executed_path)
    index = _original_cell_number(executed, error.cell_index)
    where = describe_cell(notebook, index, read_notebook(notebook).cells[index])
    return f"{where} failed: {error.ename}: {error.evalue}"


def export_html(executed_path: Path, html_path: Path) -> Path:
    """Write an HTML copy of an executed notebook (nbconvert's lab template)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(read_notebook(executed_path))
    return atomic_write_text(html_path, body)


def run_notebook(notebook: Path, out_dir: Path, profile: str, html: bool = True,
                 timeout: int | None = None, headless: bool = True) -> RunResult:
    """Execute one notebook with papermill (headless unless asked); never raises for a failing cell.

    Args:
        notebook: the notebook to run.
        out_dir: where ``<name>.ipynb`` and ``<name>.html`` go.
        profile: ``smoke``, ``cpu`` or ``gpu`` (papermill parameter ``PROFILE``).
        html: also write the HTML copy.
        timeout: seconds per cell (None: no limit).
        headless: False draws the live board and bars as in JupyterLab.

    Returns:
        A :class:`RunResult`; ``error`` names the failing cell when the run failed.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    read_notebook(notebook)  # a clear error for a missing or broken file
    executed = out_dir / notebook.name
    pin_environment(profile, headless)
    start = time.perf_counter()
    error = None
    with atomic_path(executed, suffix=".ipynb") as partial:
        try:
            papermill.execute_notebook(str(notebook), str(partial), parameters={"PROFILE": profile},
                                       kernel_name=KERNEL_NAME, cwd=str(notebook.parent.resolve()),
                                       progress_bar=False, execution_timeout=timeout)
        except PapermillExecutionError as failure:
            error = failure
    wall_time = time.perf_counter() - start
    message = _describe_failure(error, executed, notebook) if error else None
    html_path = export_html(executed, out_dir / f"{notebook.stem}.html") if html else None
    return RunResult(notebook, executed, html_path, wall_time, message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.run_notebooks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML copies")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    parser.add_argument("--live", action="store_true",
                        help="draw the live board and progress bars as in JupyterLab (to time them)")
    args = parser.parse_args(argv)

    def run_one(notebook: Path) -> None:
        try:
            result = run_notebook(notebook, args.out, args.profile, not args.no_html, args.timeout,
                                  headless=not args.live)
        except NotebookError:
            raise
        except Exception as error:  # the kernel died or would not start: say which notebook
            raise NotebookError(f"{notebook} could not be run: {type(error).__name__}: {error}") from error
        print(f"{notebook}: {'FAILED' if result.error else 'ok'} in {result.wall_time_s:.1f} s "
              f"({args.profile} profile) -> {result.executed}" + (f", {result.html}" if result.html else ""),
              flush=True)
        if result.error:
            raise NotebookError(result.error)

    return for_each_notebook(args.notebooks, run_one)


if __name__ == "__main__":
    sys.exit(main())
