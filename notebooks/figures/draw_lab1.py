#!/usr/bin/env python
"""Draw the diagrams of Lab 1 (V-Net) with matplotlib and write them next to this script.

Figures:
    lab1_skip_fusion.png   encoder-decoder; skip fusion by concatenation (U-Net, the published
                           V-Net) vs summation (this lab)
    lab1_vnet.png          the V-Net of this lab (levels, stages, channels, skips)

Usage:
    python notebooks/figures/draw_lab1.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

from labkit.io import atomic_path  # noqa: E402

ENCODER = "#4C72B0"
DECODER = "#DD8452"
SKIP = "#55A868"
BOTTOM = "#8172B3"
TEXT = "#222222"


def _box(axes, x, y, width, height, color, text="", text_color="white", size=9):
    axes.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02,rounding_size=0.08",
                                  facecolor=color, edgecolor="none"))
    if text:
        axes.text(x + width / 2, y + height / 2, text, ha="center", va="center", color=text_color,
                  fontsize=size)


def _arrow(axes, start, end, color=TEXT, style="-|>", width=1.2, dashed=False, curve=0.0):
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color,
                                   linewidth=width, linestyle="--" if dashed else "-",
                                   connectionstyle=f"arc3,rad={curve}"))


def _feature_stack(axes, x, y, channels, color, label):
    """A feature map drawn as ``channels`` thin bars; returns its right edge."""
    for index in range(channels):
        axes.add_patch(Rectangle((x + index * 0.13, y), 0.11, 1.0, facecolor=color, edgecolor="white",
                                 linewidth=0.5))
    axes.text(x + channels * 0.13 / 2, y - 0.18, label, ha="center", va="top", fontsize=8, color=TEXT)
    return x + channels * 0.13


def _fusion_panel(axes, title, concatenate):
    axes.set_title(title, fontsize=11, color=TEXT)
    _feature_stack(axes, 0.0, 2.2, 3, ENCODER, "encoder (3 ch)")
    _feature_stack(axes, 0.0, 0.2, 3, DECODER, "decoder (3 ch)")
    axes.text(1.0, 1.7, "+" if not concatenate else "cat", ha="center", va="center", fontsize=16,
              color=TEXT, fontweight="bold")
    _arrow(axes, (0.45, 2.2), (1.0, 1.95))
    _arrow(axes, (0.45, 1.2), (1.0, 1.45))
    if concatenate:
        end = _feature_stack(axes, 1.5, 1.2, 3, ENCODER, "")
        _feature_stack(axes, end, 1.2, 3, DECODER, "")
        axes.text(1.5 + 0.39, 1.02, "6 channels: t1 ++ t2\ne.g. [1 2 3] ++ [4 5 6] = [1 2 3 4 5 6]",
                  ha="center", va="top", fontsize=8, color=TEXT)
    else:
        _feature_stack(axes, 1.5, 1.2, 3, SKIP, "")
        axes.text(1.5 + 0.2, 1.02, "3 channels: t1 + t2\ne.g. [1 2 3] + [4 5 6] = [5 7 9]",
                  ha="center", va="top", fontsize=8, color=TEXT)
    _arrow(axes, (1.25 if concatenate else 1.15, 1.7), (1.45, 1.7))
    axes.set_xlim(-0.2, 2.6)
    axes.set_ylim(-0.5, 3.5)
    axes.axis("off")


def _encoder_decoder_panel(axes):
    axes.set_title("encoder-decoder with long skips", fontsize=11, color=TEXT)
    heights = [2.4, 1.8, 1.2, 0.7]
    for level, height in enumerate(heights):
        y = 1.6 - height / 2
        _box(axes, level * 0.55, y - level * 0.35, 0.35, height, ENCODER)
        _box(axes, 4.2 - level * 0.55, y - level * 0.35, 0.35, height, DECODER)
        if level < len(heights) - 1:
            _arrow(axes, (level * 0.55 + 0.35, y - level * 0.35 + height / 2),
                   ((level + 1) * 0.55, y - (level + 1) * 0.35 + heights[level + 1] / 2))
            _arrow(axes, (4.2 - (level + 1) * 0.55 + 0.35, y - (level + 1) * 0.35 + heights[level + 1] / 2),
                   (4.2 - level * 0.55, y - level * 0.35 + height / 2))
            _arrow(axes, (level * 0.55 + 0.35, y - level * 0.35 + height * 0.8),
                   (4.2 - level * 0.55, y - level * 0.35 + height * 0.8), color=SKIP, dashed=True)
    deepest = 1.6 - heights[-1] / 2 - 3 * 0.35 + heights[-1] / 2
    _arrow(axes, (3 * 0.55 + 0.35, deepest), (4.2 - 3 * 0.55, deepest), color=BOTTOM)
    axes.text(2.27, deepest - 0.45, "bottleneck:\nsmall, many channels", ha="center", va="top",
              fontsize=8, color=BOTTOM)
    axes.text(0.2, 3.05, "contracting path\n(encoder)", ha="center", fontsize=8, color=ENCODER)
    axes.text(4.35, 3.05, "expanding path\n(decoder)", ha="center", fontsize=8, color=DECODER)
    axes.text(2.4, 2.95, "skip connections", ha="center", fontsize=8, color=SKIP)
    axes.set_xlim(-0.3, 4.9)
    axes.set_ylim(-1.0, 3.6)
    axes.axis("off")


def draw_skip_fusion(path: Path) -> Path:
    """Encoder-decoder overview plus the two ways of fusing a skip."""
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    _encoder_decoder_panel(axes[0])
    _fusion_panel(axes[1], "concatenation (U-Net, published V-Net)", concatenate=True)
    _fusion_panel(axes[2], "summation (this lab)", concatenate=False)
    return _save(figure, path)


def draw_vnet(path: Path, n_filters: int = 16) -> Path:
    """This lab's V-Net: 5 levels, residual blocks of 3x3x3 convolutions, strided down-convs,
    transposed up-convs, long skips by summation (the published V-Net: 5x5x5, concatenation)."""
    down_stages, bottom_stages, up_stages = (1, 2, 3, 3), 3, (3, 3, 2, 1)
    figure, axes = plt.subplots(figsize=(11, 5.2))
    level_y = [4.0, 3.0, 2.0, 1.0, 0.0]
    width = 1.5
    for level, n_stages in enumerate(down_stages):
        channels = n_filters * 2**level
        x = level * 0.9
        _box(axes, x, level_y[level], width, 0.6, ENCODER,
             f"{n_stages} conv{'s' if n_stages > 1 else ''} + skip\n{channels} ch")
        bottom_left, bottom_right = 10.5 / 2 - width / 2, 10.5 / 2 + width / 2
        down_end = (x + 1.2, level_y[level + 1] + 0.6) if level < 3 else (bottom_left, level_y[4] + 0.3)
        _arrow(axes, (x + 0.5, level_y[level]), down_end, color=ENCODER)
        axes.text(x + 0.55, level_y[level] - 0.32, "down 2x2x2 / 2", fontsize=7, color=ENCODER,
                  ha="right")
        right = 10.5 - level * 0.9 - width
        _box(axes, right, level_y[level], width, 0.6, DECODER,
             f"{up_stages[::-1][level]} conv{'s' if up_stages[::-1][level] > 1 else ''} + skip\n{channels} ch")
        up_start = (right + 0.3, level_y[level + 1] + 0.6) if level < 3 else (bottom_right, level_y[4] + 0.3)
        _arrow(axes, up_start, (right + 1.0, level_y[level]), color=DECODER)
        axes.text(right + 0.95, level_y[level] - 0.32, "up 2x2x2 / 2", fontsize=7, color=DECODER)
        _arrow(axes, (x + width, level_y[level] + 0.3), (right - 0.12, level_y[level] + 0.3), color=SKIP,
               dashed=True)
        axes.text(right - 0.2, level_y[level] + 0.36, "+", color=SKIP, fontsize=13, fontweight="bold",
                  ha="center")
    _box(axes, 10.5 / 2 - width / 2, level_y[4], width, 0.6, BOTTOM,
         f"{bottom_stages} convs + skip\n{n_filters * 16} ch")
    axes.text(-0.35, level_y[0] + 0.3, "MRI\n2 ch", ha="right", va="center", fontsize=9, color=TEXT)
    _arrow(axes, (-0.3, level_y[0] + 0.3), (0.0, level_y[0] + 0.3))
    axes.text(10.95, level_y[0] + 0.3, "1x1x1 conv\n-> sigmoid\n-> mask", ha="left", va="center",
              fontsize=9, color=TEXT)
    _arrow(axes, (10.5, level_y[0] + 0.3), (10.9, level_y[0] + 0.3))
    axes.text(5.25, 4.95, "this lab: 3x3x3 convolutions, long skips by summation (green), short skips "
              "inside each residual block\n(the published V-Net: 5x5x5 convolutions, long skips by "
              "concatenation, PReLU, softmax over 2 channels)", ha="center", fontsize=9, color=TEXT)
    axes.set_xlim(-1.2, 12.0)
    axes.set_ylim(-0.5, 5.45)
    axes.axis("off")
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=90, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for written in (draw_skip_fusion(args.out / "lab1_skip_fusion.png"),
                    draw_vnet(args.out / "lab1_vnet.png")):
        print(f"wrote {written} ({written.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
