"""The room's results on one page: every student's ``metrics.json`` as a table and a plot.

Each argument is a ``metrics.json``, a run folder, or any folder holding run folders (a student's
``runs/``, or the hub's ``homes/`` with everyone's). The page (HTML, large type for a projector)
shows Dice by experiment variant, training time and device, one row per run. A file that cannot
be read or is not a labkit run record is listed under "Skipped" with the reason; it never stops
the board. It is a script beside ``deploy/hub.py``, not part of labkit (the notebooks never
import it); it imports labkit from this checkout.

Example::

    .venv/bin/python deploy/class_results.py hub/homes --out class_results.html
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

SHOWN = ("lab", "profile", "device", "validation_dice")  # what a row cannot do without


@dataclass(frozen=True)
class Run:
    student: str
    lab: str
    variant: str
    profile: str
    device: str
    epochs: int | None
    minutes: float | None
    validation_dice: float
    test_dice: float | None
    path: Path

    @property
    def dice(self) -> float:
        """The run's result: test Dice, else validation Dice."""
        return self.validation_dice if self.test_dice is None else self.test_dice


def find_metrics(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every ``metrics.json`` under ``paths`` (hidden folders skipped), and the paths not found."""
    found, missing = [], []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                found += [Path(folder) / "metrics.json"] if "metrics.json" in files else []
        else:
            missing.append((path, "no such file or folder"))
    return found, missing


def number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} is {value!r}, not a number")
    return float(value)


def read_run(path: Path) -> Run:
    """One row from ``path``; ``ValueError`` says why the file is not a labkit run record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot be read ({error.__class__.__name__}: {error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(record, dict) or any(key not in record for key in SHOWN):
        raise ValueError(f"not a labkit run record (it needs {', '.join(SHOWN)})")
    lab, profile = str(record["lab"]), str(record["profile"])
    folder = path.parent.name
    variant = folder.removeprefix(f"{lab}-").removeprefix(f"{profile}-") or folder
    if record.get("model") and str(record["model"]) not in variant:
        variant = f"{record['model']} {variant}"
    runs_at = max((i for i, part in enumerate(path.parts[:-1]) if part == "runs"), default=0)
    student = path.parts[runs_at - 1] if runs_at else path.parent.parent.name  # <student>/runs/
    epochs, seconds = number(record, "epochs"), number(record, "wall_time_s")
    return Run(student=student, lab=lab, variant=variant, profile=profile,
               device=str(record["device"]).split(":")[0].strip("/").lower().replace("cuda", "gpu"),
               epochs=None if epochs is None else int(epochs),
               minutes=None if seconds is None else seconds / 60,
               validation_dice=number(record, "validation_dice"),
               test_dice=number(record, "test_dice"), path=path)


def collect(paths: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The runs under ``paths`` (sorted by lab, variant, best first) and what was skipped, why."""
    files, skipped = find_metrics(paths)
    runs = []
    for path in files:
        try:
            runs.append(read_run(path))
        except ValueError as error:
            skipped.append((path, str(error)))
    return sorted(runs, key=lambda r: (r.lab, r.variant, -r.dice, r.student)), skipped


def plot_png(runs: list[Run]) -> bytes:
    """Dice by variant (left) and training minutes by variant (right), coloured by device."""
    from labkit.viz.display import figure_to_png, new_figure

    variants = sorted({(run.lab, run.variant) for run in runs})
    figure = new_figure(14, 1.5 + 0.5 * len(variants))
    colours = {"gpu": "tab:green", "cpu": "tab:blue"}
    for axes, value, title in ((figure.add_subplot(1, 2, 1), "dice", "Dice (test, else validation)"),
                               (figure.add_subplot(1, 2, 2), "minutes", "training time (minutes)")):
        for row, key in enumerate(variants):
            points = [(getattr(r, value), r.device) for r in runs if (r.lab, r.variant) == key]
            for i, (x, device) in enumerate(p for p in points if p[0] is not None):
                axes.scatter(x, row + 0.25 * math.sin(i * 2.4), s=80, alpha=0.8,
                             color=colours.get(device, "tab:orange"), label=device)
        axes.set_yticks(range(len(variants)), [f"{lab}: {variant}" for lab, variant in variants])
        axes.set_ylim(len(variants) - 0.5, -0.5)
        axes.set_title(title, fontsize=14)
        axes.grid(axis="x", alpha=0.3)
    handles = {label: h for h, label in zip(*figure.axes[0].get_legend_handles_labels(), strict=True)}
    figure.legend(handles.values(), handles.keys(), title="device", loc="upper right")
    figure.tight_layout(rect=(0, 0, 0.92, 1))
    return figure_to_png(figure)


def render_html(runs: list[Run], skipped: list[tuple[Path, str]]) -> str:
    """The board as one self-contained HTML page."""
    e = html.escape
    cell = lambda value, digits: "" if value is None else f"{value:.{digits}f}"  # noqa: E731
    rows = "".join(
        f"<tr><td>{e(r.student)}</td><td>{e(r.lab)}</td><td>{e(r.variant)}</td><td>{e(r.profile)}"
        f"</td><td>{e(r.device)}</td><td>{r.epochs or ''}</td><td>{cell(r.minutes, 1)}</td>"
        f"<td>{cell(r.validation_dice, 3)}</td><td>{cell(r.test_dice, 3)}</td></tr>" for r in runs)
    students = len({run.student for run in runs})
    picture = (f'<img class="plot" alt="Dice and time by variant" src="data:image/png;base64,'
               f'{base64.b64encode(plot_png(runs)).decode()}">' if runs else "<p>No runs yet.</p>")
    skips = "".join(f"<li><code>{e(str(path))}</code>: {e(why)}</li>" for path, why in skipped)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Class results</title><style>
body {{ font-family: sans-serif; font-size: 20px; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ccc; }}
td:nth-child(n+6) {{ text-align: right; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Class results: {len(runs)} runs from {students} students</h1>
{picture}
<table class="runs"><thead><tr><th>student</th><th>lab</th><th>variant</th><th>profile</th>
<th>device</th><th>epochs</th><th>minutes</th><th>validation Dice</th><th>test Dice</th></tr>
</thead><tbody>{rows}</tbody></table>
{f'<h2>Skipped</h2><ul class="skipped">{skips}</ul>' if skipped else ''}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/class_results.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="metrics.json files or folders")
    parser.add_argument("--out", type=Path, default=Path("class_results.html"))
    args = parser.parse_args(argv)
    runs, skipped = collect(args.paths)
    for run in runs:
        print(f"{run.student:<16} {run.lab:<6} {run.variant:<28} {run.device:<4} "
              f"Dice {run.dice:.3f}  {'' if run.minutes is None else f'{run.minutes:.1f} min'}")
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    from labkit.io import atomic_write_text

    atomic_write_text(args.out, render_html(runs, skipped))
    print(f"{len(runs)} runs, {len(skipped)} skipped: open {args.out}")
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
