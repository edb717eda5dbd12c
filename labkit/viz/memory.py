"""CFCM's memory, step by step: the hidden state and the forget gate of every ConvLSTM step.

A *trace* is a list of dicts ``{stage, step, steps, hidden, forget}`` (maps ``(h, w, C)``), one
per step, coarse stage first, as ``labkit.exercises.cfcm.memory_trace`` records it.
:func:`plot_memory` draws one step; :func:`show_memory` puts a slider over the steps in
JupyterLab, and headless shows :func:`plot_memory_overview`, the first and last step of every
stage, instead.
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


def _enlarged(array, shape):
    """The channel mean of ``array`` (h, w, C), enlarged to ``shape`` by repeating pixels."""
    mean = np.asarray(array, np.float32).mean(axis=-1)
    rows = np.arange(shape[0]) * mean.shape[0] // shape[0]
    return mean[rows][:, np.arange(shape[1]) * mean.shape[1] // shape[1]]


def _hidden_max(trace, stage) -> float:
    """One colour scale per stage, so the steps of a stage compare."""
    return max([float(np.asarray(e["hidden"]).mean(axis=-1).max()) for e in trace if e["stage"] == stage] + [1e-6])


def plot_memory(trace, image, index: int = 0, title: str | None = None) -> Figure:
    """One step of the trace: the image, the hidden state and the forget gate, side by side.

    Args:
        trace: what ``memory_trace`` returned.
        image: the (H, W) image the trace was made from.
        index: the step, from 0 (the deepest stage's first step) to ``len(trace) - 1``.
        title: shown above (e.g. the case id).
    """
    _check(trace, index)
    entry, shape = trace[index], np.shape(image)
    figure = new_figure(9.0, 3.3)
    axes = figure.subplots(1, 3)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"stage {entry['stage']} ({'x'.join(map(str, np.shape(entry['hidden'])[:2]))}), "
                      f"step {entry['step']} of {entry['steps']}", fontsize=8)
    axes[1].imshow(_enlarged(entry["hidden"], shape), cmap="magma", vmin=0, vmax=_hidden_max(trace, entry["stage"]))
    axes[1].set_title("hidden state (channel mean)", fontsize=8)
    picture = axes[2].imshow(_enlarged(entry["forget"], shape), cmap="viridis", vmin=0, vmax=1)
    axes[2].set_title("forget gate (1 keeps, 0 wipes)", fontsize=8)
    figure.colorbar(picture, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def plot_memory_overview(trace, image, title: str | None = None) -> Figure:
    """The first and the last step of every stage, one column each (the headless picture)."""
    _check(trace)
    chosen = [entry for entry in trace if entry["step"] in (1, entry["steps"])]
    figure = new_figure(1.6 * len(chosen), 3.6)
    axes = np.array(figure.subplots(2, len(chosen), squeeze=False))
    for column, entry in enumerate(chosen):
        axes[0, column].imshow(_enlarged(entry["hidden"], np.shape(image)), cmap="magma", vmin=0,
                               vmax=_hidden_max(trace, entry["stage"]))
        axes[1, column].imshow(_enlarged(entry["forget"], np.shape(image)), cmap="viridis", vmin=0, vmax=1)
        axes[0, column].set_title(f"stage {entry['stage']}\nstep {entry['step']}/{entry['steps']}", fontsize=7)
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("hidden", fontsize=8)
    axes[1, 0].set_ylabel("forget gate", fontsize=8)
    figure.suptitle(title or "memory, coarse to fine", fontsize=9)
    return figure


def show_memory(trace, image, title: str | None = None) -> None:
    """A slider over the steps (ipywidgets) in JupyterLab; the overview figure when headless."""
    _check(trace)
    if is_headless():
        show_static(plot_memory_overview(trace, image, title))
        return
    import ipywidgets
    from IPython.display import display

    slider = ipywidgets.IntSlider(value=0, min=0, max=len(trace) - 1, description="step", continuous_update=False)
    picture = ipywidgets.Image(format="png", value=figure_to_png(plot_memory(trace, image, 0, title)),
                               layout={"max_width": "100%"})
    slider.observe(lambda change: setattr(picture, "value", figure_to_png(plot_memory(trace, image, change["new"],
                                                                                        title))), names="value")
    display(ipywidgets.VBox([slider, picture]))
