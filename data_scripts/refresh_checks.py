#!/usr/bin/env python
"""Re-run the notebooks in the smoke profile and store the check cells' outputs (``make refresh-checks``).

Each notebook is executed with nbclient (kernel ``python3``, working directory = the notebook's
folder, ``LABKIT_PROFILE=smoke``, ``LABKIT_HEADLESS=1``, ``LABKIT_DATA`` / ``LABKIT_RUNS``
made absolute from the current folder). Afterwards only the cells whose source
starts with ``# NBVAL_CHECK_OUTPUT`` keep their outputs; every other output and every execution
count is cleared, and the notebook is written back atomically. nbval then compares those stored
outputs on every ``make test``.

A notebook that fails to run, or whose checks do not pass, is left untouched and the script
exits non-zero naming the notebook and the cell.

Usage:
    python data_scripts/refresh_checks.py notebooks/01_vnet_prostate.ipynb notebooks/02_cfcm_lung.ipynb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from notebook_tools import (
    FAILED_CHECK,
    NotebookError,
    clear_outputs,
    describe_cell,
    for_each_notebook,
    is_check_cell,
    output_text,
    read_notebook,
    source_of,
    write_notebook,
)
from run_notebooks import KERNEL_NAME, pin_environment


def execute(notebook, notebook_dir: Path, timeout: int = 600) -> None:
    """Run every cell of ``notebook`` in place, in ``notebook_dir``; raise on the first error."""
    client = NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(notebook_dir)}})
    client.execute()


def failed_cell(notebook, path: Path) -> str:
    """The first cell with an error output, described for a message (or 'an unknown cell')."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{describe_cell(path, index, cell)}: {output_text(output)}"
    return f"{path}: an unknown cell"


def keep_check_outputs(original, executed, path: Path):
    """``original`` with the check cells' outputs taken from ``executed``, everything else cleared.

    Raises:
        NotebookError: a check cell reports a failing check.
    """
    if len(original.cells) != len(executed.cells):
        raise NotebookError(f"{path}: the notebook changed while it ran; run this again")
    for index, (cell, ran) in enumerate(zip(original.cells, executed.cells, strict=True)):
        if not is_check_cell(cell):
            continue
        if source_of(cell) != source_of(ran):
            raise NotebookError(f"{describe_cell(path, index, cell)} changed while the notebook ran; "
                                "run this again")
        failing = [output_text(output) for output in ran.get("outputs", [])
                   if FAILED_CHECK.search(output_text(output))]
        if failing:
            raise NotebookError(f"{describe_cell(path, index, cell)} does not pass: {failing[0].strip()} "
                                "- fix the solution above it first")
        cell.outputs = ran.get("outputs", [])
    return clear_outputs(original, keep_check_outputs=True)


def refresh(path: Path, timeout: int = 600) -> int:
    """Execute ``path`` and store its check outputs; returns the number of check cells."""
    executed = read_notebook(path)
    try:
        execute(executed, path.parent, timeout)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        detail = failed_cell(executed, path) if isinstance(error, CellExecutionError) else str(error)
        raise NotebookError(f"{path} failed to run: {detail}; the notebook was not changed") from error
    refreshed = keep_check_outputs(read_notebook(path), executed, path)
    write_notebook(refreshed, path)
    return sum(is_check_cell(cell) for cell in refreshed.cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    pin_environment("smoke")

    def refresh_one(path: Path) -> str:
        start = time.perf_counter()
        count = refresh(path, args.timeout)
        return f"{path}: {count} check cell(s) refreshed in {time.perf_counter() - start:.0f} s"

    return for_each_notebook(args.notebooks, refresh_one)


if __name__ == "__main__":
    sys.exit(main())
