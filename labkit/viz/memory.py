"""CFCM's memory, step by step: the hidden state and the forget gate of every ConvLSTM step.

A *trace* is a list of dicts ``{stage, step, steps, hidden, forget}`` (maps ``(h, w, C)``), one
per step, coarse stage first, as ``labkit.exercises.cfcm.memory_trace`` records it.
:func:`plot_memory` draws one step; :func:`show_memory` puts a slider over the steps in
JupyterLab, and headless shows one figure with the first and last step of every stage.

Example:
    >>> trace = ex.memory_trace(net, image)                 # doctest: +SKIP
    >>> show_memory(trace, image, title="MCUCXR_0001_0")    # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from labkit.viz.display import figure_to_png, is_headless, new_figure, show_static
from labkit.viz.inputs import data_error


def _check(trace, index=None):
    if not trace or not all({"stage", "step", "steps", "hidden", "forget"} <= set(entry) for entry in trace):
        raise data_error(None, "a memory trace is a non-empty list of {stage, step, steps, hidden, forget}",
                         "make it with labkit.exercises.cfcm.memory_trace(net, image)")
    if index is not None and not 0 <= index < len(trace):
        raise data_error(None, f"step {index} does not exist: the trace has {len(trace)} steps",
                         f"pass index from 0 to {len(trace) - 1}")


def _maps(entry, shape):
    """Channel means of the hidden state and the forget gate, enlarged to ``shape`` (nearest)."""
    def enlarge(array):
        mean = np.asarray(array, np.float32).mean(axis=-1)
        rows = np.arange(shape[0]) * mean.shape[0] // shape[0]
        columns = np.arange(shape[1]) * mean.shape[1] // shape[1]
        return mean[rows][:, columns]
    return enlarge(entry["hidden"]), enlarge(entry["forget"])


def _draw(axes, image, entry, hidden_max):
    hidden, forget = _maps(entry, np.shape(image))
    height, width = np.shape(entry["hidden"])[:2]
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"stage {entry['stage']} ({height}x{width}), step {entry['step']} of {entry['steps']}",
                      fontsize=8)
    axes[1].imshow(hidden, cmap="magma", vmin=0, vmax=hidden_max)
    axes[1].set_title("hidden state (channel mean)", fontsize=8)
    picture = axes[2].imshow(forget, cmap="viridis", vmin=0, vmax=1)
    axes[2].set_title("forget gate (1 keeps, 0 wipes)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return picture


def plot_memory(trace, image, index: int = 0, title: str | None = None) -> Figure:
    """One step of the trace: the image, the hidden state and the forget gate, side by side.

    Args:
        trace: what ``memory_trace`` returned.
        image: the (H, W) image the trace was made from.
        index: the step, from 0 (the deepest stage's first step) to ``len(trace) - 1``.
        title: shown above (e.g. the case id).
    """
    _check(trace, index)
    figure = new_figure(9.0, 3.3)
    axes = figure.subplots(1, 3)
    picture = _draw(axes, image, trace[index], _hidden_max(trace, trace[index]["stage"]))
    figure.colorbar(picture, ax=axes[2], fraction=0.046)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def plot_memory_overview(trace, image, title: str | None = None) -> Figure:
    """The first and the last step of every stage, one column each (the headless picture)."""
    _check(trace)
    chosen = [k for k, entry in enumerate(trace) if entry["step"] in (1, entry["steps"])]
    figure = new_figure(1.6 * len(chosen), 3.6)
    axes = np.array(figure.subplots(2, len(chosen), squeeze=False))
    for column, k in enumerate(chosen):
        entry = trace[k]
        hidden, forget = _maps(entry, np.shape(image))
        axes[0, column].imshow(hidden, cmap="magma", vmin=0, vmax=_hidden_max(trace, entry["stage"]))
        axes[1, column].imshow(forget, cmap="viridis", vmin=0, vmax=1)
        axes[0, column].set_title(f"stage {entry['stage']}\nstep {entry['step']}/{entry['steps']}", fontsize=7)
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("hidden", fontsize=8)
    axes[1, 0].set_ylabel("forget gate", fontsize=8)
    figure.suptitle(title or "memory, coarse to fine", fontsize=9)
    return figure


def _hidden_max(trace, stage) -> float:
    """One colour scale per stage, so the steps of a stage compare."""
    values = [float(np.asarray(e["hidden"]).mean(axis=-1).max()) for e in trace if e["stage"] == stage]
    return max(max(values), 1e-6)


class MemoryViewer:
    """A slider over the steps of a memory trace (a static overview when headless)."""

    def __init__(self, trace, image, title: str | None = None):
        _check(trace)
        self.trace, self.image, self.title = trace, np.asarray(image, np.float32), title
        self.index = 0
        self._widget = None

    @property
    def widget(self):
        """The ipywidgets box: a slider and the picture (built on first use)."""
        if self._widget is None:
            import ipywidgets

            slider = ipywidgets.IntSlider(value=0, min=0, max=len(self.trace) - 1, description="step",
                                          continuous_update=False)
            picture = ipywidgets.Image(format="png", value=figure_to_png(self.figure()),
                                       layout={"max_width": "100%"})

            def moved(change):
                self.index = int(change["new"])
                picture.value = figure_to_png(self.figure())

            slider.observe(moved, names="value")
            self._widget = ipywidgets.VBox([slider, picture])
        return self._widget

    def figure(self) -> Figure:
        return plot_memory(self.trace, self.image, self.index, self.title)

    def _ipython_display_(self):
        if is_headless():
            show_static(plot_memory_overview(self.trace, self.image, self.title))
        else:
            from IPython.display import display

            display(self.widget)


def show_memory(trace, image, title: str | None = None) -> None:
    """Show a :class:`MemoryViewer` in the notebook (the overview figure when headless)."""
    from IPython.display import display

    display(MemoryViewer(trace, image, title))
