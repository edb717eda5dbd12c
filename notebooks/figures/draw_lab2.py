"""Draw the Lab 2 figures (CFCM, ConvLSTM gate by gate) with matplotlib.

Run from the repository root:  .venv/bin/python notebooks/figures/draw_lab2.py
Writes notebooks/figures/lab2_*.png (each well under 150 kB). The drawings are the course's
own; nothing is copied from elsewhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
DPI = 90
ACTIVE = {"edge": "#1f4e79", "face": "#dbe9f6", "text": "#10263b", "line": "#1f4e79"}
FADED = {"edge": "#c8c8c8", "face": "#f5f5f5", "text": "#b0b0b0", "line": "#d0d0d0"}
GATE_COLOURS = {"f": "#f4cccc", "i": "#d9ead3", "g": "#fff2cc", "o": "#d9d2e9"}


def _save(figure, name: str) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(figure)
    target = HERE / name
    temporary = target.with_suffix(".png.tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(target)
    return target


def _box(axes, x, y, text, active=True, width=1.0, height=0.55, face=None, size=10):
    style = ACTIVE if active else FADED
    axes.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                  boxstyle="round,pad=0.04,rounding_size=0.12", linewidth=1.5,
                                  edgecolor=style["edge"], facecolor=(face if active and face else style["face"])))
    axes.text(x, y, text, ha="center", va="center", fontsize=size, color=style["text"])


def _node(axes, x, y, symbol, active=True):
    style = ACTIVE if active else FADED
    axes.add_patch(plt.Circle((x, y), 0.22, linewidth=1.5, edgecolor=style["edge"], facecolor="white"))
    axes.text(x, y, symbol, ha="center", va="center", fontsize=13, color=style["text"], fontweight="bold")


def _arrow(axes, start, end, active=True, style="-|>", bend=0.0):
    colour = (ACTIVE if active else FADED)["line"]
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, linewidth=1.5,
                                   color=colour, connectionstyle=f"arc3,rad={bend}", shrinkA=2, shrinkB=2))


def _label(axes, x, y, text, active=True, size=11, ha="center", **kwargs):
    axes.text(x, y, text, ha=ha, va="center", fontsize=size,
              color=(ACTIVE if active else FADED)["text"], **kwargs)


# ---------------------------------------------------------------------------------------------
# The ConvLSTM step, one figure per stage of the computation
# ---------------------------------------------------------------------------------------------
STEPS = {
    1: ("What goes in: the input $x_t$, the hidden state $h_{t-1}$ and the cell state $c_{t-1}$",
        {"inputs"}),
    2: ("Concatenate $x_t$ and $h_{t-1}$, then ONE convolution to 4C channels",
        {"concat", "conv"}),
    3: ("Split the 4C channels: gates i, f, o through a sigmoid, the update g through a ReLU",
        {"gates"}),
    4: ("Forget gate: $f_t \\odot c_{t-1}$ keeps part of the old memory",
        {"forget"}),
    5: ("Input gate: $i_t \\odot g_t$ is added: the new cell state $c_t$",
        {"input", "cell"}),
    6: ("Output gate: $h_t = o_t \\odot \\mathrm{ReLU}(c_t)$, the new hidden state",
        {"output"}),
}


def draw_convlstm_step(step: int) -> Path:
    title, active = STEPS[step]
    figure, axes = plt.subplots(figsize=(8.2, 4.3))
    axes.set_xlim(-0.3, 10.6)
    axes.set_ylim(-0.5, 6.0)
    axes.axis("off")
    axes.set_title(f"Step {step}: {title}", fontsize=11, loc="left")
    on = lambda *names: bool(active & set(names)) or step == 0  # noqa: E731

    # the cell-state highway along the top
    _label(axes, 0.1, 5.0, "$c_{t-1}$", on("inputs"), size=13)
    _arrow(axes, (0.5, 5.0), (4.28, 5.0), on("inputs", "forget"))
    _node(axes, 4.5, 5.0, "×", on("forget"))
    _arrow(axes, (4.72, 5.0), (6.78, 5.0), on("forget", "cell"))
    _node(axes, 7.0, 5.0, "+", on("cell", "input"))
    _arrow(axes, (7.22, 5.0), (10.0, 5.0), on("cell", "output"))
    _label(axes, 10.3, 5.0, "$c_t$", on("cell", "output"), size=13)

    # inputs, concatenation and the single convolution
    _label(axes, 0.1, 1.0, "$h_{t-1}$", on("inputs", "concat"), size=13)
    _label(axes, 1.6, -0.2, "$x_t$", on("inputs", "concat"), size=13)
    _arrow(axes, (0.45, 1.0), (1.15, 1.0), on("inputs", "concat"))
    _arrow(axes, (1.6, 0.05), (1.6, 0.7), on("inputs", "concat"))
    _box(axes, 1.6, 1.0, "concat\n[x, h]", on("concat"), width=0.9, height=0.6, size=9)
    _arrow(axes, (2.07, 1.0), (2.55, 1.0), on("concat", "conv"))
    _box(axes, 3.2, 1.0, "conv k×k\n→ 4C", on("conv"), width=1.2, height=0.6, size=9)
    _label(axes, 3.2, 0.35, "4C = [ i | g | f | o ]", on("conv", "gates"), size=9)

    # the four gates
    gates = {"f": (4.5, 2.7, "f\nsigmoid"), "i": (5.6, 2.7, "i\nsigmoid"),
             "g": (6.7, 2.7, "g\nReLU"), "o": (8.4, 2.7, "o\nsigmoid")}
    for name, (x, y, text) in gates.items():
        user = {"f": "forget", "i": "input", "g": "input", "o": "output"}[name]
        _arrow(axes, (3.8, 1.1), (x, y - 0.33), on("gates", "conv"), bend=-0.15)
        _box(axes, x, y, text, on("gates", user), width=0.95, height=0.62, face=GATE_COLOURS[name], size=9)
    _label(axes, 4.5, 3.55, "+1 (forget bias)", on("gates", "forget"), size=8)
    _arrow(axes, (4.5, 3.02), (4.5, 4.78), on("forget"))

    # the input gate times the update, added to the cell
    _node(axes, 6.15, 3.9, "×", on("input"))
    _arrow(axes, (5.6, 3.02), (6.0, 3.72), on("input"))
    _arrow(axes, (6.7, 3.02), (6.3, 3.72), on("input"))
    _arrow(axes, (6.3, 4.08), (6.85, 4.8), on("input", "cell"))

    # the output gate: hidden = o * ReLU(new cell)
    _box(axes, 9.3, 4.0, "ReLU", on("output"), width=0.8, height=0.45, size=9)
    _arrow(axes, (9.3, 5.0), (9.3, 4.25), on("output"))
    _node(axes, 9.3, 2.7, "×", on("output"))
    _arrow(axes, (9.3, 3.77), (9.3, 2.92), on("output"))
    _arrow(axes, (8.9, 2.7), (9.08, 2.7), on("output"))
    _arrow(axes, (9.3, 2.48), (9.3, 1.25), on("output"))
    _label(axes, 9.3, 1.0, "$h_t$", on("output"), size=13)
    _label(axes, 9.3, 0.45, "(also the output)", on("output"), size=8)
    return _save(figure, f"lab2_convlstm_step{step}.png")


# ---------------------------------------------------------------------------------------------
# Skip fusion: concatenation and summation
# ---------------------------------------------------------------------------------------------
def _stack(axes, x, y, channels, colour, label, width=0.28, height=1.6):
    for k in range(channels):
        axes.add_patch(plt.Rectangle((x + k * width, y), width * 0.9, height, facecolor=colour,
                                     edgecolor="#555555", linewidth=0.8))
    axes.text(x + channels * width / 2, y - 0.3, label, ha="center", va="center", fontsize=9)


def draw_skip_fusion() -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.0, 2.8))
    for axes in (left, right):
        axes.set_xlim(0, 6.2)
        axes.set_ylim(-0.5, 2.2)
        axes.axis("off")
    encoder, decoder, mixed = "#9fc5e8", "#f9cb9c", "#b6d7a8"
    left.set_title("Concatenation: channels pile up (C + C = 2C)", fontsize=10)
    _stack(left, 0.2, 0.4, 3, encoder, "encoder (C)")
    _label(left, 1.45, 1.2, "⊕", size=14)
    _stack(left, 1.8, 0.4, 3, decoder, "decoder (C)")
    _arrow(left, (2.8, 1.2), (3.4, 1.2))
    _stack(left, 3.5, 0.4, 3, encoder, "")
    _stack(left, 4.35, 0.4, 3, decoder, "")
    _label(left, 4.35, -0.05, "concat (2C),\nthen a conv mixes them", size=9)
    right.set_title("Summation: element by element, channels stay C", fontsize=10)
    _stack(right, 0.2, 0.4, 3, encoder, "encoder (C)")
    _label(right, 1.45, 1.2, "+", size=14)
    _stack(right, 1.8, 0.4, 3, decoder, "decoder (C)")
    _arrow(right, (2.8, 1.2), (3.4, 1.2))
    _stack(right, 3.6, 0.4, 3, mixed, "sum (C)")
    return _save(figure, "lab2_skip_fusion.png")


# ---------------------------------------------------------------------------------------------
# CFCM34 overview: ladder encoder on the left, ConvLSTM memories coarse to fine on the right
# ---------------------------------------------------------------------------------------------
def draw_cfcm_overview() -> Path:
    figure, axes = plt.subplots(figsize=(9.5, 5.2))
    axes.set_xlim(-0.5, 12.5)
    axes.set_ylim(-0.7, 7.3)
    axes.axis("off")
    axes.set_title("CFCM34: every ResNet block feeds the memory of its stage, deepest stage first",
                   fontsize=11, loc="left")
    colours = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc"]
    blocks = [3, 4, 6, 3]
    _box(axes, 0.6, 6.5, "image\n1 × H × W", width=1.3, height=0.7, size=8)
    _box(axes, 0.6, 5.4, "conv 7×7\nmax-pool", width=1.3, height=0.7, size=8)
    _arrow(axes, (0.6, 6.13), (0.6, 5.77))
    for stage, count in enumerate(blocks):
        y = 5.2 - 1.45 * stage
        for block in range(count):
            _box(axes, 2.0 + 0.62 * block, y, "", width=0.5, height=0.5, face=colours[stage])
        _label(axes, 1.75, y + 0.48,
               f"stage {stage + 1}: {count} blocks, {2**stage}·B ch, H/{2**(stage + 1)}", size=8, ha="left")
        for block in range(count):
            bx = 2.0 + 0.62 * block
            _arrow(axes, (bx, y - 0.27), (7.68, y - 0.1), style="-", bend=0.12)
        _box(axes, 8.5, y, f"ConvLSTM {stage + 1}\n{count} steps", width=1.6, height=0.7,
             face=colours[stage], size=8)
        if stage > 0:
            _arrow(axes, (1.6 + 0.0, y + 1.45 - 0.3), (1.6, y + 0.3))
    for stage in range(3, 0, -1):
        y = 5.2 - 1.45 * stage
        _arrow(axes, (9.4, y + 0.2), (9.4, y + 1.25), bend=-0.4)
        _label(axes, 10.75, y + 0.72, "state → transposed\nconv 2×2, stride 2", size=7)
    _box(axes, 11.3, 5.2, "transposed conv\nconv 3×3, ReLU\nconv 3×3, sigmoid", width=2.0, height=1.0, size=8)
    _arrow(axes, (9.3, 5.2), (10.25, 5.2))
    _label(axes, 11.3, 6.3, "lung probability\nH × W", size=8)
    _label(axes, 5.2, -0.4, "inside a stage the blocks are fed in the encoder's order, first block "
           "first (as in the authors' code); the state starts at zero in stage 4", size=8)
    return _save(figure, "lab2_cfcm_overview.png")


# ---------------------------------------------------------------------------------------------
# One stage unrolled: blocks as time steps, the state handed on, the carry to the finer stage
# ---------------------------------------------------------------------------------------------
def draw_stage_unrolled() -> Path:
    figure, axes = plt.subplots(figsize=(10.0, 4.6))
    axes.set_xlim(-1.4, 12.3)
    axes.set_ylim(-0.9, 5.0)
    axes.axis("off")
    axes.set_title("One stage of CFCM unrolled (stage 2 of CFCM34: 4 blocks, 2B channels, H/4 x W/4)",
                   fontsize=11, loc="left")
    xs = [2.5, 4.8, 7.1, 9.4]
    _box(axes, 0.0, 4.1, "from stage 1\n(max-pool)", width=1.5, height=0.7, size=8, face="#eeeeee")
    _arrow(axes, (0.75, 4.1), (xs[0] - 0.55, 4.1))
    for step, x in enumerate(xs, start=1):
        _box(axes, x, 4.1, f"block {step}", width=1.1, height=0.6, face="#d9ead3", size=9)
        if step < len(xs):
            _arrow(axes, (x + 0.55, 4.1), (xs[step] - 0.55, 4.1))
        _arrow(axes, (x, 3.8), (x, 2.55))
        _label(axes, x + 0.25, 3.15, f"$x_{step}$", size=11, ha="left")
        _box(axes, x, 2.1, "ConvLSTM\nstep", width=1.2, height=0.85, face="#cfe2f3", size=9)
        _label(axes, x, 1.45, f"t = {step}", size=8)
        _arrow(axes, (x, 1.25), (x, 0.7))
        _label(axes, x, 0.45, f"$h_{step}$", size=11)
        if step < len(xs):
            _arrow(axes, (x + 0.6, 2.1), (xs[step] - 0.6, 2.1))
            _label(axes, (x + xs[step]) / 2, 2.42, f"$c_{step}, h_{step}$", size=10)
    _arrow(axes, (xs[-1] + 0.55, 4.1), (10.75, 4.1))
    _box(axes, 11.4, 4.1, "to stage 3\n(max-pool)", width=1.3, height=0.7, size=8, face="#eeeeee")
    _box(axes, -0.3, 2.1, "carry from\nstage 3:\ntransposed conv\n2x2, stride 2,\nReLU", width=1.9,
         height=1.45, size=7, face="#fff2cc")
    _arrow(axes, (0.65, 2.1), (xs[0] - 0.6, 2.1))
    _label(axes, 1.27, 2.42, "$c_0, h_0$", size=10)
    _box(axes, 11.4, 2.1, "carry to\nstage 1\n(2x size,\nhalf the\nchannels)", width=1.3, height=1.45,
         size=7, face="#fff2cc")
    _arrow(axes, (xs[-1] + 0.6, 2.1), (10.75, 2.1))
    _label(axes, 5.6, -0.35, "one ConvLSTM cell, the same weights at every step; the blocks are its time "
           "steps, in the encoder's order; the state (c, h) goes on from step to step and then up to the "
           "finer stage", size=8)
    _label(axes, 5.6, -0.72, "the deepest stage starts from zeros; after the finest stage, its last h "
           "goes to the head", size=8)
    return _save(figure, "lab2_stage_unrolled.png")


# ---------------------------------------------------------------------------------------------
# The pre-activation basic block
# ---------------------------------------------------------------------------------------------
def draw_basic_block() -> Path:
    figure, axes = plt.subplots(figsize=(8.5, 2.2))
    axes.set_xlim(-0.3, 10.8)
    axes.set_ylim(0.1, 1.9)
    axes.axis("off")
    steps = ["BN\nReLU", "conv 3×3", "BN\nReLU", "conv 3×3"]
    _label(axes, 0.1, 0.6, "x", size=13)
    _arrow(axes, (0.3, 0.6), (0.95, 0.6))
    for k, text in enumerate(steps):
        x = 1.5 + 2.0 * k
        _box(axes, x, 0.6, text, width=1.1, height=0.7, size=9,
             face="#fce5cd" if "BN" in text else "#cfe2f3")
        if k < len(steps) - 1:
            _arrow(axes, (x + 0.57, 0.6), (x + 1.43, 0.6))
    _node(axes, 9.3, 0.6, "+")
    _arrow(axes, (8.07, 0.6), (9.08, 0.6))
    _arrow(axes, (9.52, 0.6), (10.3, 0.6))
    _label(axes, 10.55, 0.6, "out", size=10)
    axes.plot([0.6, 0.6, 9.3], [0.6, 1.45, 1.45], color=ACTIVE["line"], linewidth=1.5)
    _arrow(axes, (9.3, 1.45), (9.3, 0.84))
    _label(axes, 5.0, 1.7, "shortcut: the identity, or in the first block of a stage a 1×1 conv "
           "of the BN-ReLU output", size=8)
    return _save(figure, "lab2_basic_block.png")


def main() -> None:
    written = [draw_convlstm_step(step) for step in STEPS]
    written += [draw_skip_fusion(), draw_cfcm_overview(), draw_stage_unrolled(), draw_basic_block()]
    for path in written:
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
