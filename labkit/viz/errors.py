"""A prediction's errors on three planes of a volume: the error map and colours of
:mod:`labkit.viz.gallery`, drawn by :func:`labkit.viz.slices.plot_slices`."""

from __future__ import annotations

from matplotlib.figure import Figure

from labkit.viz.gallery import ERROR_COLOURS, error_map
from labkit.viz.inputs import data_error, volume_inputs
from labkit.viz.slices import default_index, plot_slices

ERROR_NAMES = {code: name for code, name in enumerate(ERROR_COLOURS, 1)}


def plot_errors(image, label, pred, spacing=None, index=None, channel=0, alpha=0.55,
                window=None, axes=None, *, title=None) -> Figure:
    """Axial, coronal and sagittal slices with the hits, false positives and misses coloured.

    Args:
        image, spacing, channel, alpha, window, axes: as for :func:`plot_slices`.
        label: the truth on the image grid.
        pred: the prediction: a mask, or probabilities read as ``>= 0.5`` (threshold them first
            for another threshold: ``prob > 0.3``).
        index: the voxel the planes go through; where the truth (else the prediction) is
            widest when None.
        title: written above the three views (e.g. the case and its Dice).

    Example:
        >>> fig = plot_errors(case["image"], case["label"], prob > 0.4, spacing=(3, 3, 3))
    """
    volume, label, pred, spacing = volume_inputs(image, label, pred, spacing)
    if label is None or pred is None:
        raise data_error(None, "plot_errors needs both a label and a prediction",
                        "pass label=... and pred=... on the image's grid")
    index = default_index(volume.shape[1:], label, pred) if index is None else index
    figure = plot_slices(volume, error_map(label, pred), spacing=spacing, index=index,
                         channel=channel, alpha=alpha, window=window, axes=axes,
                         label_colours=tuple(ERROR_COLOURS.values()), label_name="",
                         class_names=ERROR_NAMES)
    if title:
        figure.suptitle(title, fontsize=10, y=0.995)
        if axes is None:
            figure.subplots_adjust(top=0.78)
    return figure
