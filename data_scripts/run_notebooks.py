"""Run the labs headless and keep the results (``make run``).

Papermill runs each notebook (parameter ``PROFILE``, in its folder, ``LABKIT_HEADLESS=1`` unless
``--live``) into ``<out>/<name>.ipynb`` and ``<out>/<name>.html`` and prints its wall time. A
failing notebook is still written; the command then exits 1 naming the notebook and the cell.

Usage: ``python data_scripts/run_notebooks.py --profile cpu --out build notebooks/*.ipynb``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from notebook_tools import NotebookError, describe_cell, for_each_notebook, read_notebook

from labkit import paths
from labkit.io import atomic_path, atomic_write_text
from labkit.profiles import PROFILE_NAMES

KERNEL_NAME = "python3"


def pin_environment(profile: str, headless: bool = True) -> None:
    """Set what the kernels inherit: the profile, headless drawing (``headless=False``: the live
    board and progress bars as in JupyterLab), and absolute data and run roots (the kernel runs in
    the notebook's folder, so a relative ``LABKIT_DATA`` / ``LABKIT_RUNS`` is resolved here)."""
    os.environ["LABKIT_HEADLESS"] = "1" if headless else "0"
    os.environ["LABKIT_PROFILE"] = profile
    os.environ["LABKIT_DATA"] = str(paths.data_root())
    os.environ["LABKIT_RUNS"] = str(paths.runs_root())


def run_notebook(notebook: Path, out_dir: Path, profile: str, html: bool = True,
                 timeout: int | None = None, headless: bool = True) -> tuple[Path, float, str | None]:
    """Execute one notebook into ``out_dir`` (``timeout`` s per cell, None: no limit); returns
    ``(executed notebook, wall time in s, None or the failure naming the cell)``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    read_notebook(notebook)  # a clear error for a missing or broken file
    executed, error = out_dir / notebook.name, None
    pin_environment(profile, headless)
    start = time.perf_counter()
    with atomic_path(executed, suffix=".ipynb") as partial:
        try:
            papermill.execute_notebook(str(notebook), str(partial), parameters={"PROFILE": profile},
                                       kernel_name=KERNEL_NAME, cwd=str(notebook.parent.resolve()),
                                       progress_bar=False, execution_timeout=timeout)
        except PapermillExecutionError as failure:
            cells = read_notebook(partial).cells[:failure.cell_index]
            index = failure.cell_index - sum("injected-parameters" in cell.metadata.get("tags", [])
                                             for cell in cells)  # papermill added that cell
            where = describe_cell(notebook, index, read_notebook(notebook).cells[index])
            error = f"{where} failed: {failure.ename}: {failure.evalue}"
    wall_time = time.perf_counter() - start
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(read_notebook(executed))
        atomic_write_text(out_dir / f"{notebook.stem}.html", body)
    return executed, wall_time, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python data_scripts/run_notebooks.py",
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
            executed, wall_time, error = run_notebook(notebook, args.out, args.profile, not args.no_html,
                                                      args.timeout, headless=not args.live)
        except NotebookError:
            raise
        except Exception as failure:  # the kernel died or would not start: say which notebook
            raise NotebookError(f"{notebook} could not be run: {type(failure).__name__}: {failure}") from failure
        html = "" if args.no_html else f", {args.out / notebook.stem}.html"
        print(f"{notebook}: {'FAILED' if error else 'ok'} in {wall_time:.1f} s ({args.profile} profile) "
              f"-> {executed}{html}", flush=True)
        if error:
            raise NotebookError(error)

    return for_each_notebook(args.notebooks, run_one)


if __name__ == "__main__":
    sys.exit(main())
