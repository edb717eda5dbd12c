"""What both distributed trainers share, without importing a framework.

Command-line options, the settings they override, the run folder, the rank-0 log and the
``metrics.json`` record. ``labkit.train.vnet`` (PyTorch) and ``labkit.train.cfcm``
(TensorFlow) build on these; nothing here imports torch or tensorflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.io import atomic_write_json
from labkit.paths import run_dir
from labkit.profiles import PROFILE_NAMES, Profile, get_profile

HISTORY_FILE = "history.json"
SETTINGS_FILE = "settings.json"
LR_SCALINGS = ("none", "linear", "sqrt")


class TrainError(ValueError):
    """A bad command line or a run that cannot start; the message says what to do."""


class LabCodeMissing(TrainError):
    """The notebook's exported module (``labkit/labs/<lab>.py``) or a name in it is missing."""


# ----------------------------------------------------------------------------------------------
# Which process am I?
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rank:
    """This process's place among the training processes (from torchrun's variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs, checkpoints and writes metrics (rank 0)."""
        return self.rank == 0


def rank_from_environment(environ=None) -> Rank:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun); one process without them.

    Raises:
        TrainError: when the variables are not whole numbers or do not fit together.
    """
    environ = os.environ if environ is None else environ
    try:
        rank = Rank(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)),
                    int(environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise TrainError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start the "
                         "processes with torchrun, which sets them") from None
    if rank.world_size < 1 or not 0 <= rank.rank < rank.world_size:
        raise TrainError(f"RANK={rank.rank} does not fit WORLD_SIZE={rank.world_size}; start the "
                         "processes with torchrun, which sets both")
    return rank


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def size_argument(text: str) -> tuple[int, ...]:
    """``"64,64,32"`` or ``"64x64x32"`` -> ``(64, 64, 32)`` (argparse type)."""
    parts = re.split(r"[,x]", text.strip().lower())
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 64,64,32 or 64x64x32")
    return tuple(int(part) for part in parts)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options both labs accept (settings default to the profile's)."""
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                        help="settings profile (default: LABKIT_PROFILE, else gpu when a GPU is seen, else cpu)")
    parser.add_argument("--run-name", default=None,
                        help="run folder <runs>/<lab>-<profile>-<name>; the same name resumes the run")
    parser.add_argument("--max-epochs", type=_positive, default=None, help="epochs in all")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="cases per device (per process or per replica) and step")
    parser.add_argument("--lr", type=float, default=None, help="learning rate before scaling")
    parser.add_argument("--lr-scaling", choices=LR_SCALINGS, default="none",
                        help="scale lr with the number of devices: linear (x N), sqrt (x sqrt N) or none")
    parser.add_argument("--max-cases", type=_positive, default=None, help="cap on training cases")
    parser.add_argument("--image-size", type=size_argument, default=None, help="e.g. 64,64,32 (Lab 1) or 128,128 (Lab 2)")
    parser.add_argument("--filters", type=_positive, default=None,
                        help="width of the first level (Lab 1 n_filters, Lab 2 base_filters)")
    parser.add_argument("--steps-per-epoch", type=_positive, default=None,
                        help="stop each epoch after this many steps (quick checks)")
    parser.add_argument("--eval-batches", type=_positive, default=None,
                        help="evaluate at most this many batches per split and device (quick checks)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the profile's)")
    parser.add_argument("--data", type=Path, default=None, help="data root (default: LABKIT_DATA or ./data)")
    parser.add_argument("--runs", type=Path, default=None, help="runs root (default: LABKIT_RUNS or ./runs)")
    parser.add_argument("--workers", type=_positive, default=None,
                        help="processes preparing cases before training (default: up to 4)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore the run folder's checkpoint and start again")
    return parser


def apply_environment(args: argparse.Namespace) -> None:
    """``--data`` and ``--runs`` become ``LABKIT_DATA`` / ``LABKIT_RUNS`` (so caches follow)."""
    if args.data is not None:
        os.environ["LABKIT_DATA"] = str(Path(args.data).expanduser().resolve())
    if args.runs is not None:
        os.environ["LABKIT_RUNS"] = str(Path(args.runs).expanduser().resolve())


def settings_from_arguments(args: argparse.Namespace, lab: str) -> tuple[Profile, object]:
    """The profile with the command line's overrides applied; returns (profile, lab settings).

    Raises:
        TrainError: when an override does not fit the lab (e.g. a 2-number size for Lab 1).
    """
    profile = get_profile(args.profile)
    settings = getattr(profile, lab)
    dimensions = len(settings.image_size)
    changes = {}
    if args.image_size is not None:
        if len(args.image_size) != dimensions:
            raise TrainError(f"--image-size {','.join(map(str, args.image_size))} has "
                             f"{len(args.image_size)} numbers; {lab} needs {dimensions}")
        changes["image_size"] = tuple(args.image_size)
    for option, field in (("max_epochs", "max_epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                          ("max_cases", "max_cases"),
                          ("filters", "n_filters" if lab == "vnet" else "base_filters")):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    if args.lr is not None and args.lr <= 0:
        raise TrainError(f"--lr must be positive, got {args.lr}")
    profile = profile.with_vnet(**changes) if lab == "vnet" else profile.with_cfcm(**changes)
    if args.seed is not None:
        profile = dataclasses.replace(profile, seed=int(args.seed))
    return profile, getattr(profile, lab)


def scaled_lr(lr: float, devices: int, scaling: str) -> float:
    """The learning rate for ``devices`` data-parallel devices.

    Gradients are averaged over the devices, so the global batch is ``devices`` times the
    per-device batch; ``linear`` multiplies lr by ``devices`` (Goyal et al., 2017), ``sqrt``
    by its square root, ``none`` keeps it.
    """
    if scaling not in LR_SCALINGS:
        raise TrainError(f"lr scaling must be one of {', '.join(LR_SCALINGS)}, got {scaling!r}")
    factor = {"none": 1.0, "linear": float(devices), "sqrt": float(devices) ** 0.5}[scaling]
    return lr * factor


def default_run_name(profile: Profile, kind: str) -> str:
    """``<profile>-<kind>``, e.g. ``gpu-ddp`` or ``cpu-mirrored``: stable, so a rerun resumes."""
    return f"{profile.name}-{kind}"


def run_folder(lab: str, name: str) -> Path:
    """``labkit.paths.run_dir(lab, name)`` (created)."""
    return run_dir(lab, name)


# ----------------------------------------------------------------------------------------------
# The notebook's exported code
# ----------------------------------------------------------------------------------------------
def import_lab(lab: str):
    """Import ``labkit.labs.<lab>`` (written from the notebook by ``make export``).

    Raises:
        LabCodeMissing: when the module has not been generated yet.
    """
    name = f"labkit.labs.{lab}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        raise LabCodeMissing(f"labkit/labs/{lab}.py is missing: it is generated from the notebook's "
                             "cells tagged export; run `make export` (python -m labkit.export "
                             "notebooks/*.ipynb)") from None


def lab_attribute(module, names: tuple[str, ...], what: str):
    """The first of ``names`` that ``module`` defines.

    Raises:
        LabCodeMissing: naming the module, the names looked for and what to do.
    """
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise LabCodeMissing(f"{module.__file__}: no {what} ({' or '.join(names)}) among the notebook's "
                         "cells tagged export; tag the cell that defines it and run `make export`")


# ----------------------------------------------------------------------------------------------
# Logging, history, metrics (rank 0)
# ----------------------------------------------------------------------------------------------
class RunLog:
    """Prints one line per event on the main process only, and keeps the epoch history.

    Args:
        folder: the run folder (``history.json`` is written there atomically each epoch).
        is_main: False on every other rank: nothing is printed or written.
        history: a history restored from a checkpoint, to continue.
    """

    def __init__(self, folder: Path, is_main: bool, history: dict | None = None):
        self.folder = Path(folder)
        self.is_main = is_main
        self.history = {key: list(values) for key, values in (history or {}).items()}
        self.started = time.perf_counter()

    def info(self, message: str) -> None:
        """Print ``message`` (rank 0 only), flushed so logs from several nodes interleave well."""
        if self.is_main:
            print(f"[labkit.train] {message}", file=sys.stdout, flush=True)

    def epoch(self, epoch: int, max_epochs: int, recorded: int | None = None, **values: float) -> None:
        """Record one epoch's numbers, print them and write ``history.json``.

        Args:
            epoch: the epoch just finished, counted from 0.
            max_epochs: epochs in all (for the printed line).
            recorded: the number stored under ``history['epoch']`` (default ``epoch + 1``);
                each lab keeps its notebook's numbering so a run resumes in either.
            **values: e.g. ``train_loss=0.4, validation_dice=0.7``.
        """
        self.history.setdefault("epoch", []).append(epoch + 1 if recorded is None else int(recorded))
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))
        shown = " ".join(f"{key} {float(value):.4f}" for key, value in values.items())
        self.info(f"epoch {epoch + 1}/{max_epochs} {shown}")
        if self.is_main:
            atomic_write_json(self.folder / HISTORY_FILE, self.history)

    def elapsed(self) -> float:
        """Seconds since this log was made (this session's wall time)."""
        return time.perf_counter() - self.started


def write_settings(folder: Path, record: dict) -> Path:
    """Write the run's settings as ``settings.json`` (atomic) so a resume can compare."""
    return atomic_write_json(Path(folder) / SETTINGS_FILE, record)


def check_same_settings(saved: dict | None, current: dict, folder: Path) -> None:
    """Refuse to resume a run whose model-shaping settings differ.

    Raises:
        TrainError: naming the folder, the differing settings and what to do.
    """
    if not saved:
        return
    shaping = ("lab", "model", "image_size", "n_filters", "base_filters", "blocks", "normalization")
    differing = [key for key in shaping if key in saved and key in current
                 and _plain(saved[key]) != _plain(current[key])]
    if differing:
        shown = ", ".join(f"{key} {saved[key]} -> {current[key]}" for key in differing)
        raise TrainError(f"{folder}: the checkpoint there was trained with other settings ({shown}); "
                         "choose another --run-name, or pass --fresh to start this one again")


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def per_case_rows(split: str, scores: dict) -> list[dict]:
    """``[{'split', 'id', 'dice'}]`` rows for ``metrics.json``, sorted by id."""
    return [{"split": split, "id": case_id, "dice": float(value)} for case_id, value in sorted(scores.items())]


def mean_or_none(scores: dict) -> float | None:
    """The mean of the dict's values, None when empty (a split without cases)."""
    return float(sum(scores.values()) / len(scores)) if scores else None


def metrics_record(lab: str, profile: Profile, device: str, data_source: str, epochs: int,
                   wall_time_s: float, scores: dict, **extra) -> dict:
    """The ``metrics.json`` record (``labkit.runs.REQUIRED_KEYS`` and ``extra``).

    Args:
        scores: ``{'train': {id: dice}, 'validation': {...}, 'test': {...}}``.
    """
    rows = [row for split in ("train", "validation", "test") for row in per_case_rows(split, scores.get(split, {}))]
    record = {"lab": lab, "profile": profile.name, "device": device, "data_source": data_source,
              "epochs": int(epochs), "wall_time_s": round(float(wall_time_s), 3),
              "train_dice": mean_or_none(scores.get("train", {})),
              "validation_dice": mean_or_none(scores.get("validation", {})),
              "test_dice": mean_or_none(scores.get("test", {})), "per_case": rows}
    record.update(extra)
    return record


def split_cases(split: dict, max_cases: int | None) -> dict:
    """The split with the training cases capped at ``max_cases`` (the others kept whole)."""
    cases = dict(split)
    if max_cases is not None:
        cases["train"] = list(cases["train"])[: int(max_cases)]
    return cases


__all__ = ["LabCodeMissing", "Rank", "RunLog", "TrainError", "add_common_arguments",
           "apply_environment", "check_same_settings", "default_run_name", "import_lab",
           "lab_attribute", "metrics_record", "rank_from_environment", "run_folder", "scaled_lr",
           "settings_from_arguments", "split_cases", "write_settings"]
