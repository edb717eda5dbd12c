#!/usr/bin/env python
"""Run deploy/Dockerfile's build steps in a plain virtual environment (no Docker needed).

ARG and ENV lines set variables, ``COPY . $COURSE`` copies the checkout (less what
``Dockerfile.dockerignore`` names), WORKDIR changes folder and each RUN line runs in bash, in
order, stopping at the first failure. Two things differ from ``docker build``, on purpose:

- ``COURSE`` and ``VENV`` point into ``--venv``'s folder instead of ``/opt/course``;
- pip works offline: right after the step that makes the virtual environment, the packages of
  the Python running this script are linked into it (a ``.pth`` file) and the venv's own older
  setuptools is removed, so the install step finds every requirement installed and builds the
  course without build isolation, downloading nothing (``docker build`` downloads them).

FROM, USER and CMD describe the image, not its build: they are listed, not run. ``--build-arg
NAME=VALUE`` overrides an ARG as ``docker build`` does (the test builds a small data set).

Usage:
    .venv/bin/python deploy/check_image_steps.py --venv /tmp/image-check [--build-arg ...]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def expand(text: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), text)


def assignments(arguments: str, env: dict) -> dict:
    """``A=b C=$A`` (ENV, ARG) as a dict, each value expanded with what came before."""
    found = {}
    for word in arguments.split():
        name, _, value = word.partition("=")
        found[name] = expand(value, {**env, **found})
    return found


def copy_checkout(target: Path) -> None:
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(folder, names):  # a pattern names a path from the root; **/ one anywhere
        relative = Path(folder).relative_to(ROOT)
        return [name for name in names if any(
            fnmatch.fnmatch(name, pattern[3:]) if pattern.startswith("**/")
            else fnmatch.fnmatch((relative / name).as_posix(), pattern) for pattern in patterns)]

    shutil.copytree(ROOT, target, ignore=ignored, symlinks=True, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, required=True, help="a new folder for the check")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    work = args.venv.resolve()
    fixed = {"COURSE": str(work / "course"), "VENV": str(work / "course" / ".venv")}
    base_python = Path(getattr(sys, "_base_executable", sys.executable)).parent
    env = {**os.environ, "PATH": f"{base_python}:{os.environ.get('PATH', '')}", **fixed,
           "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    overrides = dict(arg.split("=", 1) for arg in args.build_arg)
    cwd = work
    work.mkdir(parents=True, exist_ok=True)
    for keyword, arguments in instructions(DEPLOY / "Dockerfile"):
        keyword = keyword.upper()
        if keyword in ("ENV", "ARG"):
            values = assignments(arguments, env)
            env.update({k: v for k, v in values.items() if k not in fixed})
            env.update({k: v for k, v in overrides.items() if k in values and keyword == "ARG"})
        elif keyword == "COPY":
            source, target = arguments.split()
            assert source == ".", f"only COPY . is supported, not {arguments}"
            copy_checkout(Path(expand(target, env)))
        elif keyword == "WORKDIR":
            cwd = Path(expand(arguments, env))
            if not cwd.is_relative_to(work):
                print(f"skipped WORKDIR {arguments}: outside the check's folder (runtime only)")
        elif keyword == "RUN":
            if not cwd.is_relative_to(work):
                print(f"FAILED: RUN after WORKDIR outside the build folder: {arguments}")
                return 1
            print(f"RUN {arguments}", flush=True)
            result = subprocess.run(["bash", "-c", arguments], cwd=cwd, env=env)
            if result.returncode != 0:
                print(f"FAILED (exit {result.returncode}): {arguments}")
                return 1
            venv_python = Path(env["VENV"]) / "bin" / "python"
            if " venv " in f" {arguments} " and venv_python.exists():
                site = subprocess.run([str(venv_python), "-c", "import sysconfig; print("
                                       "sysconfig.get_paths()['purelib'])"], capture_output=True,
                                      text=True, check=True).stdout.strip()
                Path(site, "course-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
                subprocess.run([str(venv_python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
                               check=True, env=env)  # the linked, newer one builds the course
        else:
            print(f"not run: {keyword} {arguments}")
    print(f"image steps ran in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
