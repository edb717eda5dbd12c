"""Build the synthetic prostate MRI and chest X-ray sets in the official layouts.

    .venv/bin/python data_scripts/make_phantoms.py --root data
    .venv/bin/python data_scripts/make_phantoms.py --only lung --lung-cases 20 --seed 3
    .venv/bin/python data_scripts/make_phantoms.py --prostate-sizes 128 --lung-sizes 200 256

A set whose folder already exists is left alone (real data is never overwritten); delete the
folder to rebuild it. Each set is built in a temporary folder and renamed into place, so an
interrupted run leaves nothing half-made. Every generated folder holds a ``SYNTHETIC.txt``
marker, so runs record that they trained on synthetic data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import phantoms  # noqa: E402  (data_scripts/phantoms.py, beside this script)

from labkit.paths import LUNG_DIR, PROSTATE_DIR  # noqa: E402


def _progress(iterable, total):
    if os.environ.get("LABKIT_HEADLESS") == "1" or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, leave=False, unit="case")


def make_default_sets(root, only: str | None = None, prostate_cases: int = 32,
                      lung_cases: int = 80, seed: int = 0, progress=None, log=print,
                      prostate_geometry=phantoms.DEFAULT_PROSTATE,
                      lung_geometry=phantoms.DEFAULT_LUNG) -> dict:
    """Build the synthetic sets under ``root``, skipping a set whose folder already has files;
    returns ``{'prostate': 'built'|'exists'|'skipped', 'lung': ...}``."""
    outcome = {}
    for name, folder in (("prostate", Path(root) / PROSTATE_DIR), ("lung", Path(root) / LUNG_DIR)):
        if only and only != name:
            outcome[name] = "skipped"
        elif folder.exists() and any(folder.iterdir()):
            log(f"{folder} already exists: left as it is (delete it to rebuild)")
            outcome[name] = "exists"
        else:
            if folder.exists():
                folder.rmdir()
            log(f"building synthetic {name} set in {folder} ...")
            if name == "prostate":
                phantoms.write_prostate_set(folder, prostate_cases, max(2, prostate_cases // 8),
                                            seed, prostate_geometry, progress)
            else:
                phantoms.write_lung_set(folder, lung_cases, seed, lung_geometry, progress)
            outcome[name] = "built"
    return outcome


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("LABKIT_DATA") or "data",
                        help="data root (default: $LABKIT_DATA or ./data)")
    parser.add_argument("--only", choices=("prostate", "lung"), help="build one set only")
    parser.add_argument("--prostate-cases", type=int, default=32, help="labelled prostate cases")
    parser.add_argument("--lung-cases", type=int, default=80, help="chest X-ray cases")
    parser.add_argument("--seed", type=int, default=0, help="the sets are a function of this seed")
    parser.add_argument("--prostate-sizes", type=int, nargs="+", metavar="N",
                        default=list(phantoms.DEFAULT_PROSTATE.in_plane_sizes),
                        help="in-plane sizes drawn from (default: 256 320 320 384)")
    parser.add_argument("--prostate-slices", type=int, nargs=2, metavar=("MIN", "MAX"),
                        default=list(phantoms.DEFAULT_PROSTATE.slices), help="slice count range")
    parser.add_argument("--lung-sizes", type=int, nargs=2, metavar=("MIN", "MAX"),
                        default=list(phantoms.DEFAULT_LUNG.long_side),
                        help="range of the long image side in pixels (default: 480 640)")
    args = parser.parse_args(argv)
    if args.prostate_cases < 1 or args.lung_cases < 1:
        parser.error("--prostate-cases and --lung-cases must be at least 1")
    if min(args.prostate_sizes + args.prostate_slices + args.lung_sizes) < 8:
        parser.error("sizes must be at least 8")
    if args.prostate_slices[0] > args.prostate_slices[1] or args.lung_sizes[0] > args.lung_sizes[1]:
        parser.error("a MIN is larger than its MAX")
    prostate_geometry = replace(phantoms.DEFAULT_PROSTATE, in_plane_sizes=tuple(args.prostate_sizes),
                                slices=tuple(args.prostate_slices))
    lung_geometry = replace(phantoms.DEFAULT_LUNG, long_side=tuple(args.lung_sizes))
    start = time.perf_counter()
    outcome = make_default_sets(Path(args.root), only=args.only,
                                prostate_cases=args.prostate_cases, lung_cases=args.lung_cases,
                                seed=args.seed, progress=_progress,
                                prostate_geometry=prostate_geometry, lung_geometry=lung_geometry)
    built = [name for name, what in outcome.items() if what == "built"]
    print(f"synthetic data in {Path(args.root).resolve()}: "
          + ", ".join(f"{name} {what}" for name, what in outcome.items())
          + (f" ({time.perf_counter() - start:.0f} s)" if built else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
