"""A picture of tensor shapes on their way through an encoder-decoder, level by level."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from labkit.viz.display import new_figure
from labkit.viz.inputs import data_error

KIND_COLOURS = {"encoder": "#4C72B0", "down": "#4C72B0", "bottom": "#8172B3", "up": "#DD8452",
                "+": "#55A868", "decoder": "#DD8452"}


def plot_shape_trace(trace, links=()) -> Figure:
    """Each step as a box placed by its resolution level (deeper = lower), labelled with its shape.

    Args:
        trace: ``[(name, shape), ...]`` in the order the tensors were computed; shapes are
            ``(batch, channels, x, y, z)`` (or any ``(batch, channels, *spatial)``). The first
            entry sets the top level; each halving of the first spatial side is one level down.
            A name starting with ``encoder``, ``down``, ``bottom``, ``up``, ``+`` or ``decoder``
            picks the box colour.
        links: ``[(from name, to name), ...]`` drawn as dashed arcs above the boxes, e.g. the
            long skips ``("encoder 1", "+ kept 1")``.
    """
    steps = [(str(name), tuple(int(size) for size in shape)) for name, shape in trace]
    if not steps or any(len(shape) < 3 for _, shape in steps):
        raise data_error(None, "the trace is empty or holds a shape without spatial axes",
                        "pass [(name, (batch, channels, x, ...)), ...] for each step")
    top = steps[0][1][2]
    levels = [round(math.log2(top / shape[2])) for _, shape in steps]
    figure = new_figure(max(8.0, 0.62 * len(steps)), 1.3 + 0.8 * (max(levels) + 1))
    axes = figure.subplots()
    figure.subplots_adjust(left=0.07, right=0.99, top=0.88, bottom=0.04)
    for position, ((name, shape), level) in enumerate(zip(steps, levels, strict=True)):
        colour = next((c for kind, c in KIND_COLOURS.items() if name.startswith(kind)), "#777777")
        width = 0.86
        axes.add_patch(FancyBboxPatch((position - width / 2, -level - 0.3), width, 0.6,
                                      boxstyle="round,pad=0.02", facecolor=colour, edgecolor="none"))
        spatial = "x".join(map(str, shape[2:]))
        axes.text(position, -level, f"{shape[1]} ch\n{spatial}", ha="center", va="center",
                  fontsize=6.5, color="white")
        axes.text(position, -level + 0.36, name, ha="center", va="bottom", fontsize=7)
        if position:
            axes.annotate("", (position - width / 2, -level), (position - 1 + width / 2, -levels[position - 1]),
                          arrowprops={"arrowstyle": "->", "color": "#444444", "lw": 0.8})
    position_of = {name: position for position, (name, _) in enumerate(steps)}
    for start, end in links:
        if start not in position_of or end not in position_of:
            raise data_error(None, f"link {start!r} -> {end!r} names a step not in the trace",
                            "use names from the trace")
        level = levels[position_of[start]]
        axes.annotate("", (position_of[end], -level + 0.3), (position_of[start], -level + 0.3),
                      arrowprops={"arrowstyle": "->", "color": KIND_COLOURS["+"], "lw": 1.0,
                                  "linestyle": "--", "connectionstyle": "arc3,rad=-0.12"})
    axes.set_xlim(-0.6, len(steps) - 0.4)
    axes.set_ylim(-max(levels) - 0.6, 1.6 if links else 1.0)
    axes.set_yticks([-level for level in range(max(levels) + 1)],
                    [f"level {level + 1}" for level in range(max(levels) + 1)], fontsize=8)
    axes.set_xticks([])
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    axes.set_title("shape of each step: channels and voxels (batch left out)", fontsize=9)
    return figure
