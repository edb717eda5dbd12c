"""Training curves: a pure plotting function and a live board redrawn in place.

The board keeps a history such as ``{'epoch': [0, 1], 'train_loss': [...], 'validation_dice':
[...]}``. In a front end it redraws one picture under the cell after an epoch (the curves and, when
given, one validation slice with the current prediction); headless (CI, a script,
``LABKIT_HEADLESS=1``) it prints one line per epoch, and :meth:`TrainingBoard.close` shows the
final picture once so that an executed notebook still holds it. :func:`plot_variants` compares
the curves of several runs (an experiment's variants, each with a few seeds).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from labkit import runs
from labkit.viz.display import in_kernel, is_headless, new_figure, png_output, show_static
from labkit.viz.gallery import ERROR_COLOURS, error_map
from labkit.viz.inputs import data_error, to_numpy
from labkit.viz.slices import default_window, mask_rgba

DRAWING_SHARE = 0.02  # live redraws take at most this share of the time since the board started
SPLIT_STYLES = {"train": ("#1f77b4", "-"), "validation": ("#d62728", "-"), "test": ("#2ca02c", "--")}


def series_for(history: dict, metric: str) -> dict[str, str]:
    """``{history key: legend name}`` of the series that belong to ``metric`` (``loss`` ...)."""
    keys = [key for key in history if key != "epoch" and (key == metric or key.endswith(f"_{metric}"))]
    return {key: key.replace("_", " ") for key in keys}


def metrics_in(history: dict) -> list[str]:
    """The metric names in a history: ``train_loss`` and ``validation_loss`` give ``loss``."""
    names = []
    for key in history:
        if key == "epoch":
            continue
        name = key.split("_", 1)[1] if key.split("_", 1)[0] in SPLIT_STYLES and "_" in key else key
        if name not in names:
            names.append(name)
    return names


def best_epoch(history: dict) -> tuple[int, str, float] | None:
    """The best validation epoch as ``(epoch, key, value)``: :func:`labkit.runs.best_epoch`
    (highest validation Dice), else the lowest validation loss; None without validation values."""
    epoch = runs.best_epoch(history)
    if epoch is not None:
        return epoch, "validation_dice", float(history["validation_dice"][history["epoch"].index(epoch)])
    values = np.asarray(history.get("validation_loss", []), dtype=float)
    if values.size and np.isfinite(values).any():
        position = int(np.nanargmin(values))
        return int(history["epoch"][position]), "validation_loss", float(values[position])
    return None


def plot_curves(history: dict, axes=None, *, metrics: Sequence[str] | None = None,
                title: str | None = None, eta: str | None = None) -> Figure:
    """Plot each metric's train / validation curves against the epoch, best epoch marked.

    Args:
        history: ``{'epoch': [...], 'train_loss': [...], 'validation_dice': [...], ...}``; a
            missing value is NaN and is skipped.
        axes: one Axes per metric to draw into; a new figure when None.
        metrics: which metrics to plot, in order; all found in the history when None.
        title: figure title.
        eta: a short text (e.g. ``"ETA 0:02:10"``) written at the top right.

    Example:
        >>> fig = plot_curves({"epoch": [0, 1], "train_loss": [0.9, 0.7], "validation_loss": [0.95, 0.8]})
    """
    _check_history(history)
    metrics = list(metrics or metrics_in(history)) or ["loss"]
    figure, axes = _figure_and_axes(axes, len(metrics))
    best = best_epoch(history)
    for metric, ax in zip(metrics, axes, strict=True):
        _draw_metric(ax, history, metric, best)
    best_text = best and f"best epoch {best[0]} ({best[1].replace('_', ' ')} {best[2]:.4f})"
    top = " · ".join(part for part in (title, best_text, eta) if part)
    if top:
        figure.suptitle(top, fontsize=10)
    return figure


def _draw_metric(ax, history, metric, best):
    epochs = np.asarray(history.get("epoch", []), dtype=float)
    for key, name in series_for(history, metric).items():
        values = np.asarray(history[key], dtype=float)
        keep = np.isfinite(values)
        colour, style = SPLIT_STYLES.get(key.split("_", 1)[0], (None, "-"))
        ax.plot(epochs[keep], values[keep], style, color=colour, marker="o", markersize=3,
                label=name)
    if best is not None:
        ax.axvline(best[0], color="#555555", linestyle=":", linewidth=1)
        key = f"validation_{metric}"
        if key in history:
            value = history[key][history["epoch"].index(best[0])]
            if value is not None and math.isfinite(value):
                ax.plot([best[0]], [value], marker="*", markersize=12, color="#ff9900",
                        linestyle="none", label=f"best (epoch {best[0]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _figure_and_axes(axes, count):
    if axes is None:
        figure = new_figure(4.6 * count, 3.4)
        axes = np.atleast_1d(figure.subplots(1, count))
        figure.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.15, wspace=0.25)
        return figure, list(axes)
    axes = list(np.ravel(axes))
    if len(axes) != count:
        raise data_error(None, f"plot_curves needs {count} axes (one per metric), got {len(axes)}",
                        "pass one Axes per metric or axes=None")
    return axes[0].figure, axes


def _check_history(history):
    if not isinstance(history, dict) or "epoch" not in history:
        raise data_error(None, "the history is not a dict with an 'epoch' list",
                        "pass board.history or {'epoch': [...], 'train_loss': [...], ...}")
    lengths = {key: len(values) for key, values in history.items()}
    if len(set(lengths.values())) > 1:
        raise data_error(None, f"the history's lists have different lengths {lengths}",
                        "give every list one value per epoch (NaN where there is none)")


def plot_variants(results: dict, metric: str = "validation_dice", axes=None, *,
                  title: str | None = None) -> Figure:
    """One curve per variant: the mean over its runs, shaded from the lowest to the highest run.

    Args:
        results: ``{variant name: [history, ...]}``, one history per run (seed), each with
            ``'epoch'`` and ``metric``.
        metric: the history key to plot.
        axes: the Axes to draw into; a new figure when None.
        title: the figure title.

    Example:
        >>> fig = plot_variants({"baseline": [run_a.history, run_b.history]})
    """
    if axes is None:
        figure = new_figure(7.5, 3.8)
        axes = figure.subplots()
    for name, histories in results.items():
        for history in histories:
            _check_history(history)
        epochs = np.asarray(histories[0]["epoch"], dtype=float)
        values = np.array([[float(value) for value in history[metric]] for history in histories])
        line, = axes.plot(epochs, np.nanmean(values, axis=0), marker="o", markersize=2.5, label=name)
        if len(histories) > 1:
            axes.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                              color=line.get_color(), alpha=0.18, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric.replace("_", " "))
    if metric.endswith("dice"):
        axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    if title:
        axes.set_title(title, fontsize=10)
    return axes.figure


class TrainingBoard:
    """Live train / validation curves, redrawn in place after each epoch, within a time budget.

    Drawing the picture (about 0.15 s on a laptop core for the curves and a slice) is time the
    training waits for, so the board redraws only while its drawing has taken at most
    ``DRAWING_SHARE`` (2 %) of the time since it started: 3-second epochs are drawn about every
    other epoch, 10-second epochs every time, and :meth:`close` always draws the last one. With
    ``LABKIT_BOARD_LOG`` set to a file name, :meth:`close` appends one JSON line with the board's
    updates, draws and drawing seconds (the notebook benchmark reads it).

    Args:
        metrics: the metrics to plot, one panel each (``'loss'``, ``'dice'``, ...).
        max_epochs: the planned number of epochs, for the ETA (one update per epoch).
        title: shown above the curves.
        history: the curves of epochs already trained (a resumed run's ``run.history``),
            drawn from the start.

    Example:
        >>> board = TrainingBoard(max_epochs=10)
        >>> for epoch in range(10):
        ...     board.update(epoch, train_loss=0.5, validation_loss=0.6, validation_dice=0.7,
        ...                  picture=(image, label, prob))      # one validation case
        >>> board.close()
    """

    def __init__(self, metrics: Sequence[str] = ("loss", "dice"), max_epochs: int | None = None,
                 title: str | None = None, history: dict | None = None):
        self.metrics = tuple(metrics)
        self.max_epochs = max_epochs
        self.title = title
        self.history: dict[str, list] = {"epoch": []}
        self.headless = is_headless()
        self.picture = None  # (image, label, prob) slices of the latest update
        self._slice = None  # the axial slice shown, chosen at the first picture
        self._handle = None
        self._closed = False
        self.draws = 0  # pictures sent to the front end
        self.drawing_seconds = 0.0  # time spent drawing them
        earlier = history or {}
        for index, epoch in enumerate(earlier.get("epoch", [])):
            self._record(int(epoch), {key: values[index] for key, values in earlier.items()
                                      if any(series_for({key: 0}, metric) for metric in self.metrics)})
        self._replayed = len(self.history["epoch"])
        self._started = time.perf_counter()
        if self._replayed and not self.headless:
            self._redraw()

    def update(self, epoch: int, picture=None, **values: float) -> None:
        """Record the values of one epoch, then redraw (or print one line when headless).

        Args:
            epoch: the epoch number.
            picture: ``(image, label, prob)`` of one validation case, drawn beside the curves
                with its hits, false positives and misses at probability 0.5. 2D slices, or
                volumes ``(X, Y, Z)`` / channel-first ``(C, X, Y, Z)`` (the first channel is
                shown), of which the axial slice with the most label is drawn, the same
                slice every epoch.
            **values: e.g. ``train_loss=0.41, validation_loss=0.45, validation_dice=0.62``;
                tensors and numpy scalars are fine.
        """
        self._record(int(epoch), {key: _as_float(key, value) for key, value in values.items()})
        if picture is not None:
            self.picture = self._slices(picture)
        if self.headless:
            print(self.text_line(), flush=True)
        elif self.drawing_seconds <= DRAWING_SHARE * (time.perf_counter() - self._started):
            self._redraw()

    def text_line(self) -> str:
        """The headless line for the latest epoch: values, best epoch and ETA."""
        epoch = self.history["epoch"][-1]
        of = f"/{self.max_epochs}" if self.max_epochs else ""
        parts = [f"epoch {epoch}{of}"]
        for key, values in self.history.items():
            if key != "epoch" and math.isfinite(values[-1]):
                parts.append(f"{key} {values[-1]:.4f}")
        best = best_epoch(self.history)
        if best is not None:
            parts.append(f"best epoch {best[0]}")
        parts.append(self.eta_text())
        return " | ".join(parts)

    def eta_text(self) -> str:
        """``"12.3 s/epoch, ETA 0:01:40"`` (no ETA without ``max_epochs``)."""
        done = len(self.history["epoch"])
        per_epoch = (time.perf_counter() - self._started) / max(done - self._replayed, 1)
        text = f"{per_epoch:.1f} s/epoch"
        if self.max_epochs:
            remaining = max(self.max_epochs - done, 0) * per_epoch
            text += f", ETA {_clock(remaining)}"
        return text

    def figure(self) -> Figure:
        """The curves so far (and the latest picture) as a new figure."""
        eta = self.eta_text() if not self._closed else None
        if self.picture is None:
            return plot_curves(self.history, metrics=self.metrics, title=self.title, eta=eta)
        count = len(self.metrics)
        figure = new_figure(4.6 * count + 3.4, 3.4)
        axes = figure.subplots(1, count + 1, gridspec_kw={"width_ratios": [1.35] * count + [1]})
        figure.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.15, wspace=0.28)
        plot_curves(self.history, axes=axes[:count], metrics=self.metrics, title=self.title, eta=eta)
        _draw_picture(axes[-1], *self.picture, epoch=self.history["epoch"][-1])
        return figure

    def close(self) -> None:
        """Finish: leave one static figure of the final curves under the cell."""
        if self._closed:
            return
        self._closed = True
        if not self.history["epoch"]:
            return
        if self.headless:
            show_static(self.figure())
        else:
            self._redraw()
        log = os.environ.get("LABKIT_BOARD_LOG")
        if log:
            record = {"title": self.title, "updates": len(self.history["epoch"]) - self._replayed,
                      "draws": self.draws, "drawing_s": round(self.drawing_seconds, 4),
                      "elapsed_s": round(time.perf_counter() - self._started, 3), "headless": self.headless}
            with open(log, "a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _record(self, epoch: int, values: dict[str, float]) -> None:
        done = len(self.history["epoch"])
        self.history["epoch"].append(epoch)
        for key in values:
            if key == "epoch":
                raise data_error(None, "'epoch' is passed twice", "pass the epoch only as the first argument")
            self.history.setdefault(key, [math.nan] * done)
        for key, series in self.history.items():
            if key != "epoch":
                series.append(values.get(key, math.nan))

    def _slices(self, picture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not isinstance(picture, (tuple, list)) or len(picture) != 3:
            raise data_error(None, "picture is not an (image, label, prob) triple",
                            "pass picture=(image, label, prob) of one case")
        arrays = []
        for array in map(to_numpy, picture):
            array = array[0] if array.ndim == 4 else array
            if array.ndim == 3:
                if self._slice is None:  # the label's widest axial slice, kept for every epoch
                    label = to_numpy(picture[1]).reshape(array.shape)
                    self._slice = int(np.argmax(label.sum(axis=(0, 1))))
                array = array[:, :, self._slice]
            if array.ndim != 2:
                raise data_error(None, f"a picture array has shape {array.shape}",
                                "pass 2D slices or (X, Y, Z) / (C, X, Y, Z) volumes")
            arrays.append(array.astype(np.float32))
        return tuple(arrays)

    def _redraw(self) -> None:
        if not in_kernel():
            return
        from IPython.display import display

        started = time.perf_counter()
        picture = png_output(self.figure())
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)
        self.draws += 1
        self.drawing_seconds += time.perf_counter() - started


def _draw_picture(ax, image, label, prob, epoch) -> None:
    """One slice (x across, y up) with hits, false positives and misses at probability 0.5."""
    low, high = default_window(image)
    ax.imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
    codes = error_map(label > 0.5, prob >= 0.5)
    ax.imshow(mask_rgba(codes.T, tuple(ERROR_COLOURS.values()), 0.55), origin="lower",
              interpolation="nearest")
    ax.set_title(f"validation case, epoch {epoch}\ngreen hit · red false positive · blue missed",
                 fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _as_float(key: str, value) -> float:
    try:
        return float(to_numpy(value).reshape(()))
    except (TypeError, ValueError) as error:
        raise data_error(None, f"{key}={value!r} is not a single number",
                        f"pass {key} as a float, e.g. loss.item()") from error


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
