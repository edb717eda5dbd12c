#!/usr/bin/env python
"""Each user's server starts here, as that user: the course notebooks in, cores pinned, then Lab.

JupyterHub runs this instead of ``jupyterhub-singleuser`` (``make hub``: deploy/jupyterhub_config.py;
Kubernetes: ``singleuser.cmd`` in deploy/kubernetes/values.yaml) and its arguments are passed on.

- ``LABKIT_HUB_NOTEBOOKS``: a folder whose files are copied into the home when missing there, at
  every start: a student's own copy is never overwritten, a deleted one comes back.
- ``LABKIT_RUNS``: made if missing.
- ``LABKIT_HUB_CPUS``: ``0,1``: the server, its kernels and terminals run on these cores only (the
  labs size their thread pools by them); empty: all cores.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def copy_missing(source: Path, target: Path) -> list[Path]:
    """Copy every file of ``source`` into ``target`` that is not there; returns the copies."""
    copied = []
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir() or ".ipynb_checkpoints" in path.parts or os.path.lexists(destination):
            continue
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            copied.append(destination)
        except OSError as error:  # a student's file or folder in the way: keep theirs
            print(f"did not copy {path.name}: {error}", file=sys.stderr)
    return copied


def main(args: list[str]) -> None:
    if os.environ.get("LABKIT_HUB_NOTEBOOKS"):
        copy_missing(Path(os.environ["LABKIT_HUB_NOTEBOOKS"]), Path.home())
    Path(os.environ.get("LABKIT_RUNS", Path.home() / "runs")).mkdir(parents=True, exist_ok=True)
    if os.environ.get("LABKIT_HUB_CPUS"):
        os.sched_setaffinity(0, {int(core) for core in os.environ["LABKIT_HUB_CPUS"].split(",")})
    os.execv(sys.executable, [sys.executable, "-m", "jupyterhub.singleuser", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
