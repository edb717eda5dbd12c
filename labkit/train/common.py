"""What both multi-device trainers share, without importing a framework.

The command line, the settings it overrides, learning-rate scaling, which process this is,
the notebook's exported code, and the per-case rows of ``metrics.json``. Run folders,
checkpoints and resuming are :class:`labkit.runs.Run`'s, as in the notebooks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
from dataclasses import dataclass

from labkit.profiles import PROFILE_NAMES, Profile, get_profile

LR_SCALINGS = ("none", "linear", "sqrt")


class TrainError(ValueError):
    """A bad command line or a run that cannot start; the message says what to do."""


@dataclass(frozen=True)
class Rank:
    """This process's place among the training processes (torchrun's variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:  # the process that prints, checkpoints and writes metrics
        return self.rank == 0


def rank_from_environment(environ=None) -> Rank:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them (one process without).

    Raises:
        TrainError: when they are not whole numbers or do not fit together.
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


def size_argument(text: str) -> tuple[int, ...]:
    """``"64,64,32"`` or ``"64x64x32"`` -> ``(64, 64, 32)`` (an argparse type)."""
    parts = re.split(r"[,x]", text.strip().lower())
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 64,64,32 or 64x64x32")
    return tuple(int(part) for part in parts)


def positive(text: str) -> int:
    """A whole number of at least 1 (an argparse type)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options both labs take; settings default to the profile's."""
    add = parser.add_argument
    add("--profile", choices=PROFILE_NAMES, default=None,
        help="settings profile (default: LABKIT_PROFILE, else gpu when a GPU is seen, else cpu)")
    add("--run-name", default=None, help="run folder <runs>/<lab>-<profile>-<name>; the same name resumes")
    add("--max-epochs", type=positive, default=None, help="epochs in all")
    add("--batch-size", type=positive, default=None, help="cases per device (process or replica) and step")
    add("--lr", type=float, default=None, help="learning rate before scaling")
    add("--lr-scaling", choices=LR_SCALINGS, default="none",
        help="scale lr with the number of devices: linear (x N), sqrt (x sqrt N) or none")
    add("--max-cases", type=positive, default=None, help="at most this many cases of each split")
    add("--image-size", type=size_argument, default=None, help="e.g. 64,64,32 (Lab 1) or 128,128 (Lab 2)")
    add("--filters", type=positive, default=None, help="base_filters: the width of the first level")
    add("--seed", type=int, default=None, help="seed (default: the profile's)")
    add("--fresh", action="store_true", help="start the run folder's run again instead of resuming it")
    return parser


def settings_from_arguments(args: argparse.Namespace, lab: str, **changes) -> Profile:
    """The profile with the command line's overrides (and ``changes``) applied.

    Raises:
        TrainError: when an override does not fit the lab (e.g. a 2-number size for Lab 1).
    """
    profile = get_profile(args.profile)
    dimensions = len(getattr(profile, lab).image_size)
    if args.image_size is not None:
        if len(args.image_size) != dimensions:
            raise TrainError(f"--image-size {','.join(map(str, args.image_size))} has "
                             f"{len(args.image_size)} numbers; {lab} needs {dimensions}")
        changes["image_size"] = tuple(args.image_size)
    if args.lr is not None and args.lr <= 0:
        raise TrainError(f"--lr must be positive, got {args.lr}")
    for option, field in (("max_epochs", "max_epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                          ("max_cases", "max_cases"), ("filters", "base_filters")):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    profile = profile.with_vnet(**changes) if lab == "vnet" else profile.with_cfcm(**changes)
    return profile if args.seed is None else dataclasses.replace(profile, seed=int(args.seed))


def scaled_lr(lr: float, devices: int, scaling: str) -> float:
    """The learning rate for ``devices`` data-parallel devices.

    Gradients are averaged over the devices, so the global batch is ``devices`` times the
    per-device batch; ``linear`` multiplies lr by ``devices`` (Goyal et al., 2017), ``sqrt``
    by its square root, ``none`` keeps it.
    """
    factor = {"none": 1.0, "linear": float(devices), "sqrt": float(devices) ** 0.5}
    if scaling not in factor:
        raise TrainError(f"lr scaling must be one of {', '.join(LR_SCALINGS)}, got {scaling!r}")
    return lr * factor[scaling]


def import_lab(lab: str):
    """``labkit.labs.<lab>``: the notebook's cells tagged ``export`` (``make export`` writes it).

    Raises:
        TrainError: when the module is missing, saying how to make it.
    """
    try:
        return importlib.import_module(f"labkit.labs.{lab}")
    except ModuleNotFoundError as error:
        if error.name != f"labkit.labs.{lab}":
            raise
        raise TrainError(f"labkit/labs/{lab}.py is missing: it is written from the notebook's cells "
                         "tagged export by `make export`") from None


def per_case_rows(scores: dict) -> list[dict]:
    """``{split: {case id: dice}}`` -> ``[{'split', 'id', 'dice'}]`` for ``metrics.json``."""
    return [{"split": split, "id": case_id, "dice": float(value)}
            for split, by_case in scores.items() for case_id, value in sorted(by_case.items())]


def mean_or_none(scores: dict) -> float | None:
    """The mean of the dict's values; None when it is empty (a split without cases)."""
    return float(sum(scores.values()) / len(scores)) if scores else None


def say_finished(run, result: dict) -> None:
    """The last log line: where ``metrics.json`` is, the best epoch and the test Dice."""
    test = "n/a" if result["test_dice"] is None else f"{result['test_dice']:.3f}"
    print(f"[labkit.train] wrote {run.folder / 'metrics.json'} | best epoch {result['best_epoch']} "
          f"| test Dice {test}", flush=True)
