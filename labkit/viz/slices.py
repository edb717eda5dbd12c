"""Three orthogonal slices of a volume with label / prediction overlays (pure matplotlib).

Conventions: arrays are indexed ``[x, y, z]`` (channel first when there is a channel) and
``spacing`` is in mm in the same order. Each plane is drawn in millimetres, so the picture keeps
the true voxel aspect: axial shows x across and y up at one z, coronal x across and z up at
one y, sagittal y across and z up at one x.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from labkit.viz.display import new_figure
from labkit.viz.inputs import data_error, volume_inputs

# Truth in greens/blues, prediction in reds: class 1, 2, 3, ... (cycled).
LABEL_COLOURS = ("#00d400", "#00b4ff", "#ffd700", "#7cfc00")
PRED_COLOURS = ("#ff1a1a", "#ff00ff", "#ff8c00", "#ff69b4")
CROSSHAIR_COLOUR = "#ffff66"

# (title, fixed axis, across axis, up axis)
PLANES = (("Axial", 2, 0, 1), ("Coronal", 1, 0, 2), ("Sagittal", 0, 1, 2))
AXIS_NAMES = "xyz"
OVERLAYS = ("fill", "contour")


def default_window(volume: np.ndarray) -> tuple[float, float]:
    """Display range for one channel: its 1st to 99th percentile (never an empty range)."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(value) for value in np.percentile(finite, (1, 99)))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low, low + 1.0)


def default_index(shape: Sequence[int], *masks) -> tuple[int, int, int]:
    """Where to look first: per axis, the slice holding most of the first non-empty mask.

    Each plane then cuts the structure at its widest; with no mask (or empty ones) the centre.
    """
    for mask in masks:
        if mask is not None and mask.any():
            return tuple(_widest_slice(mask > 0, axis) for axis in range(3))
    return tuple(int(size) // 2 for size in shape)


def _widest_slice(foreground: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most foreground; the middle one of a tie."""
    counts = foreground.sum(axis=tuple(other for other in range(3) if other != axis))
    widest = np.flatnonzero(counts == counts.max())
    return int(widest[len(widest) // 2])


def plot_slices(image, label=None, pred=None, spacing=None, index=None, channel=0,
                overlay="fill", alpha=0.4, window=None, axes=None, *, crosshair=True,
                channel_name=None, class_names=None, label_colours=None,
                label_name="truth") -> Figure:
    """Draw the axial, coronal and sagittal slices through one voxel.

    Args:
        image: ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)`` array (or tensor), a NIfTI path,
            or a case dict (``image``, ``label``, optional ``pred``, ``image_meta['spacing']``).
        label: truth class map on the same grid (``0`` is background), optional.
        pred: predicted class map, probabilities (read as ``>= 0.5``) or scores, optional.
        spacing: voxel size in mm, x/y/z; from the case or file, else ``(1, 1, 1)``, when None.
        index: the voxel ``(x, y, z)`` the three planes go through; when None, per axis the
            slice with the most label (else prediction) voxels, or the centre without masks.
        channel: which image channel to show (e.g. 0 = T2, 1 = ADC for the prostate set).
        overlay: ``'fill'`` (translucent areas) or ``'contour'`` (outlines).
        alpha: opacity of the filled overlays, 0 to 1 (outlines are opaque).
        window: ``(low, high)`` intensities mapped to black and white; 1st-99th percentile of
            the channel when None.
        axes: three matplotlib Axes to draw into; a new figure when None.
        crosshair: draw lines where the other two planes cut each view.
        channel_name: shown in the axial title (e.g. ``"T2"``).
        class_names: ``{class: name}`` for the legend (e.g. ``{1: "PZ", 2: "TZ"}``).
        label_colours: a colour per label class (1, 2, ...); greens and blues when None.
        label_name: the legend's word for the label's classes ("" for none).

    Example:
        >>> fig = plot_slices(case["image"], case["label"], spacing=(0.6, 0.6, 3.6))
        >>> fig.savefig("slices.png")
    """
    volume, label, pred, spacing = volume_inputs(image, label, pred, spacing)
    channel = _check_channel(channel, volume.shape[0])
    index = _check_index(index, volume.shape[1:], label, pred)
    if overlay not in OVERLAYS:
        raise data_error(None, f"overlay={overlay!r} is not one of {OVERLAYS}",
                        "pass overlay='fill' or overlay='contour'")
    window = default_window(volume[channel]) if window is None else _check_window(window)
    figure, axes = _figure_and_axes(axes, volume.shape[1:], spacing)
    overlays = [(label, tuple(label_colours or LABEL_COLOURS)), (pred, PRED_COLOURS)]
    for plane, ax in zip(PLANES, axes, strict=True):
        _draw_plane(ax, plane, volume[channel], overlays, spacing, index, window, overlay,
                    float(alpha), crosshair)
    if channel_name:
        axes[0].set_title(f"{axes[0].get_title()} · {channel_name}", fontsize=9)
    _add_legend(figure, overlays, class_names, label_name)
    return figure


def plane_image(volume: np.ndarray, plane: tuple, index: Sequence[int]) -> np.ndarray:
    """The 2D slice of ``volume`` (X, Y, Z) for ``plane``, rows = up axis, columns = across."""
    fixed = plane[1]
    return np.take(volume, index[fixed], axis=fixed).T


def plane_extent(shape: Sequence[int], spacing: Sequence[float], plane: tuple):
    """``(left, right, bottom, top)`` in mm of ``plane`` for a grid of ``shape``."""
    _, _, across, up = plane
    return (0.0, shape[across] * spacing[across], 0.0, shape[up] * spacing[up])


def _draw_plane(ax, plane, volume, overlays, spacing, index, window, overlay, alpha, crosshair):
    """One view: the image, then each ``(mask, colours)`` overlay that is not None."""
    title, fixed, across, up = plane
    extent = plane_extent(volume.shape, spacing, plane)
    ax.imshow(plane_image(volume, plane, index), cmap="gray", vmin=window[0], vmax=window[1],
              origin="lower", extent=extent, interpolation="nearest", aspect="equal")
    for mask, colours in overlays:
        if mask is not None:
            _draw_mask(ax, plane_image(mask, plane, index), extent, colours, overlay, alpha)
    if crosshair:
        ax.axvline((index[across] + 0.5) * spacing[across], color=CROSSHAIR_COLOUR, lw=0.8, alpha=0.7)
        ax.axhline((index[up] + 0.5) * spacing[up], color=CROSSHAIR_COLOUR, lw=0.8, alpha=0.7)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(f"{title}\n{AXIS_NAMES[fixed]} = {index[fixed]} / {volume.shape[fixed] - 1}",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def classes_in(mask: np.ndarray) -> list[int]:
    """The foreground classes (> 0) present in an integer mask, in order."""
    counts = np.bincount(np.clip(mask, 0, None).ravel())
    return [int(value) for value in np.flatnonzero(counts) if value > 0]


def _draw_mask(ax, mask2d, extent, colours, overlay, alpha):
    classes = classes_in(mask2d)
    if not classes:
        return
    if overlay == "fill":
        ax.imshow(mask_rgba(mask2d, colours, alpha), origin="lower", extent=extent,
                  interpolation="nearest", aspect="equal")
        return
    rows, columns = mask2d.shape
    across = np.linspace(extent[0], extent[1], 2 * columns + 1)[1::2]
    up = np.linspace(extent[2], extent[3], 2 * rows + 1)[1::2]
    for value in classes:
        ax.contour(across, up, (mask2d == value).astype(np.float32), levels=[0.5],
                   colors=[colours[(value - 1) % len(colours)]], linewidths=1.5)


def mask_rgba(mask2d: np.ndarray, colours, alpha: float) -> np.ndarray:
    """An RGBA picture of an integer mask: class ``k`` in ``colours[k - 1]``, background clear."""
    rgba = np.zeros(mask2d.shape + (4,), dtype=np.float32)
    for value in classes_in(mask2d):
        rgba[mask2d == value] = to_rgba(colours[(value - 1) % len(colours)], alpha)
    return rgba


def _add_legend(figure, overlays, class_names, label_name):
    handles = []
    for (mask, colours), kind in zip(overlays, (label_name, "pred"), strict=True):
        for value in ([] if mask is None else classes_in(mask)):
            name = (class_names or {}).get(value, str(value))
            handles.append(Patch(color=colours[(value - 1) % len(colours)],
                                 label=f"{kind} {name}".strip()))
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6),
                      fontsize=8, frameon=False)


def _figure_and_axes(axes, shape=None, spacing=None):
    if axes is None:
        ratios = [max(extent[1] / extent[3], 0.7) for extent in
                  (plane_extent(shape, spacing, plane) for plane in PLANES)]
        height = min(3.4, 12.0 / sum(ratios))
        figure = new_figure(height * sum(ratios) * 1.06 + 0.2, height + 0.75)
        axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": ratios})
        figure.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.12, wspace=0.06)
        return figure, list(axes)
    axes = list(np.ravel(axes))
    if len(axes) != 3:
        raise data_error(None, f"plot_slices needs 3 axes, got {len(axes)}",
                        "pass three Axes (axial, coronal, sagittal) or axes=None")
    return axes[0].figure, axes


def _check_channel(channel, count: int) -> int:
    if not isinstance(channel, (int, np.integer)) or not 0 <= channel < count:
        raise data_error(None, f"channel {channel!r} does not exist: the image has {count} "
                        "channel(s)", f"pass channel as an integer from 0 to {count - 1}")
    return int(channel)


def _check_window(window) -> tuple[float, float]:
    values = tuple(float(value) for value in np.ravel(window))
    if len(values) != 2 or not values[0] < values[1]:
        raise data_error(None, f"window {window!r} is not a (low, high) pair with low < high",
                        "pass window=(low, high) in image intensities, or None for automatic")
    return values


def _check_index(index, shape, label=None, pred=None) -> tuple[int, int, int]:
    if index is None:
        return default_index(shape, label, pred)
    values = tuple(int(value) for value in np.ravel(index))
    if len(values) != 3 or any(not 0 <= v < size for v, size in zip(values, shape, strict=True)):
        raise data_error(None, f"index {index!r} is outside the volume of shape {tuple(shape)}",
                        "pass index as (x, y, z) voxel numbers inside the volume, or None")
    return values
