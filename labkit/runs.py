"""Run folders: what a training run leaves behind, and the one rule for resuming it.

Both notebooks and ``labkit.train`` train through :class:`Run`. A run folder
``<LABKIT_RUNS>/<lab>-<profile>-<name>/`` holds:

=================  =====================================================================
``settings.json``  the settings the run started with (the seed among them)
``history.json``   one value per finished epoch: losses, Dice scores, seconds
checkpoints        written by the framework's adapter (``torch_utils.Checkpoint`` or
                   ``tf_utils.Checkpoint``): the last finished epoch and the best one
``metrics.json``   the results, for instructors and CI (:data:`REQUIRED_KEYS`)
=================  =====================================================================

**Resuming.** Started again with the same lab, profile and name, a run continues after its
last finished epoch. Only ``max_epochs`` may change (to train longer); any other change of
the settings is refused, naming what changed, because the checkpoint would continue a
different experiment. Start another run name instead, or start afresh.

**Best epoch.** The epoch with the highest ``validation_dice`` (the later one on a tie);
its network is kept beside the last epoch's.

Example:
    >>> run = Run("vnet", "cpu", "baseline", settings, torch_utils.Checkpoint(net, optimizer=optimizer))
    >>> for epoch in run.epochs(settings["max_epochs"]):       # doctest: +SKIP
    ...     values = {"train_loss": ..., "validation_dice": ...}
    ...     run.end_epoch(**values)
    >>> run.finish(device="cpu", data_source="synthetic", test_dice=0.8, per_case=rows)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from labkit import __version__
from labkit.io import atomic_write_json
from labkit.paths import run_dir

REQUIRED_KEYS = ("lab", "profile", "device", "data_source", "epochs", "wall_time_s",
                 "train_dice", "validation_dice", "test_dice", "per_case")
MAY_CHANGE_ON_RESUME = ("max_epochs",)


class SettingsChanged(ValueError):
    """A run folder holds a run started with other settings; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names it and the fix."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; training stopped before saving that epoch."""


def check_loss(loss, step: int | None = None) -> float:
    """``loss`` as a float; :class:`TrainingDiverged` when it is NaN or infinite.

    Args:
        loss: the batch's loss (a number or a one-element PyTorch / TensorFlow tensor).
        step: the batch number within the epoch, from 0, for the message.
    """
    value = float(loss)
    if not math.isfinite(value):
        where = "" if step is None else f" at training step {step + 1} of this epoch"
        raise TrainingDiverged(
            f"the training loss became {value}{where}, so training stopped. Likely causes: a "
            "learning rate too high, a bad input (NaN / Inf voxels, an empty image) or a float16 "
            "overflow under mixed precision. The last checkpoint is the last good epoch and was "
            "not touched: lower lr (e.g. by 10x), check the data (python -m labkit doctor) or "
            "turn mixed precision off, then run the training cell again to resume from it.")
    return value


class Run:
    """One training run: its folder, settings, history, checkpoints and ``metrics.json``.

    Args:
        lab: ``"vnet"`` or ``"cfcm"``.
        profile: the profile's name (``"smoke"``, ``"cpu"``, ``"gpu"``).
        name: the run name; the folder is ``<runs>/<lab>-<profile>-<name>``.
        settings: what defines the run (a dataclass or a dict of plain values).
        checkpoint: the framework's adapter, with ``restore(folder) -> epochs done or None``,
            ``save(folder or None, epochs_done, best)``, ``load_best(folder) -> bool`` and
            ``clear(folder)``.
        resume: continue from the folder's last checkpoint when there is one; False starts afresh.
        is_main: False on the other processes of a multi-device run: they print and write nothing.
    """

    def __init__(self, lab: str, profile: str, name: str, settings, checkpoint, resume: bool = True,
                 is_main: bool = True):
        self.lab, self.profile, self.is_main = lab, profile, is_main
        self.folder = run_dir(lab, f"{profile}-{name}")
        self.settings = plain(asdict(settings) if is_dataclass(settings) else settings)
        self.checkpoint = checkpoint
        self.history: dict[str, list] = {}
        saved = read_json(self.folder / "settings.json")
        done = None
        if resume and saved is not None:
            check_resumable(saved, self.settings, self.folder)
            done = checkpoint.restore(self.folder)
        if done is None:
            if self.is_main:
                checkpoint.clear(self.folder)
            self._say(f"new run in {self.folder.name}")
        else:
            saved = read_json(self.folder / "history.json") or {}
            # history.json is written before the checkpoint, so it may be one epoch ahead (cut it)
            # but not behind, unless the folder was copied half-way: then the gaps are NaN
            self.history = {key: [math.nan if value is None else value for value in (values + [None] * done)[:done]]
                            for key, values in saved.items() if key != "epoch"}
            self.history["epoch"] = list(range(1, done + 1))
            self._say(f"resuming {self.folder.name} after epoch {done}")
        if self.is_main:
            atomic_write_json(self.folder / "settings.json", self.settings)
        self._epoch_started = None

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("epoch", []))

    @property
    def wall_time_s(self) -> float:
        """Training time so far, in seconds (earlier sessions of the run included)."""
        return float(sum(self.history.get("seconds", [])))

    @property
    def best_epoch(self) -> int | None:
        """The epoch (from 1) with the highest validation Dice; None before the first."""
        return best_epoch(self.history)

    def at_best(self, key: str):
        """``history[key]`` at the best epoch (None before the first)."""
        best = self.best_epoch
        return None if best is None else self.history[key][self.history["epoch"].index(best)]

    def epochs(self, max_epochs: int):
        """The epochs left to train, counted from 0; each one is timed until :meth:`end_epoch`."""
        for epoch in range(self.epochs_done, int(max_epochs)):
            self._epoch_started = time.perf_counter()
            yield epoch

    def end_epoch(self, **values: float) -> None:
        """Record the finished epoch's values, save its checkpoint and ``history.json``.

        Args:
            **values: e.g. ``train_loss=0.4, validation_dice=0.8``; ``validation_dice``
                decides the best epoch.
        """
        started = self._epoch_started or time.perf_counter()
        values = {key: float(value) for key, value in values.items()}
        values["seconds"] = time.perf_counter() - started
        done = self.epochs_done
        self.history.setdefault("epoch", []).append(done + 1)
        for key, value in values.items():
            self.history.setdefault(key, [math.nan] * done).append(value)
        best = self.best_epoch == done + 1
        if self.is_main:  # first: a kill between the two leaves history ahead, which resume cuts
            atomic_write_json(self.folder / "history.json", self.history)
        self.checkpoint.save(self.folder if self.is_main else None, done + 1, best)
        self._epoch_started = None

    def load_best(self) -> int | None:
        """Load the best epoch's network into the model; returns that epoch (None: none saved)."""
        return self.best_epoch if self.checkpoint.load_best(self.folder) else None

    def finish(self, **results) -> dict:
        """Write ``metrics.json`` (main process only) and return the record.

        ``train_dice`` and ``validation_dice`` default to the best epoch's; ``results`` must
        supply ``device``, ``data_source``, ``test_dice`` and ``per_case`` (see
        :data:`REQUIRED_KEYS`) and may add anything else.

        Raises:
            ValueError: naming the keys that are missing.
        """
        record = {"lab": self.lab, "profile": self.profile, "epochs": self.epochs_done,
                  "wall_time_s": round(self.wall_time_s, 1), "best_epoch": self.best_epoch,
                  "train_dice": self.at_best("train_dice") if "train_dice" in self.history else None,
                  "validation_dice": self.at_best("validation_dice"),
                  "settings": self.settings, "history": self.history, **results}
        check_metrics(self.folder, record)
        if self.is_main:
            write_metrics(self.folder, record)
        return record

    def _say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def best_epoch(history: dict) -> int | None:
    """The epoch with the highest validation Dice (the later one on a tie); None without one."""
    scores = zip(history.get("validation_dice", []), history.get("epoch", []), strict=False)
    finite = [(score, epoch) for score, epoch in scores if score is not None and math.isfinite(score)]
    return max(finite)[1] if finite else None


def check_resumable(saved: dict, current: dict, folder: Path) -> None:
    """The one rule: a run resumes only when nothing but ``max_epochs`` changed.

    Raises:
        SettingsChanged: naming each change and what to do.
    """
    changed = {key for key in set(saved) | set(current)
               if key not in MAY_CHANGE_ON_RESUME and saved.get(key) != current.get(key)}
    if changed:
        shown = ", ".join(f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(changed))
        raise SettingsChanged(
            f"{folder} holds a run with other settings ({shown}); only max_epochs may change to "
            "continue a run. Choose another run name (RUN_NAME in the notebook, --run-name for "
            "labkit.train), or start this one afresh (RESUME = False, --fresh, or delete the folder)")


def check_metrics(folder, metrics: dict) -> None:
    """Raise ValueError naming the :data:`REQUIRED_KEYS` that ``metrics`` lacks."""
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"metrics.json for {folder} is missing {', '.join(missing)}")


def write_metrics(folder: str | Path, metrics: dict) -> Path:
    """Check the required keys and write ``metrics.json`` atomically; returns its path.

    Raises:
        ValueError: when a required key is missing (names them).
    """
    check_metrics(folder, metrics)
    record = {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "labkit_version": __version__,
              "python": platform.python_version(), **plain(metrics)}
    return atomic_write_json(Path(folder) / "metrics.json", record)


def plain(value):
    """JSON's view of ``value``: tuples become lists, NaN and infinities None, numpy scalars floats."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: Path):
    """The file's JSON, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
