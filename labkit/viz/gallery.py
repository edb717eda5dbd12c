"""A paged gallery of 2D images (chest X-rays): image, truth, prediction, error map; outlines.

The error map shows true positives green, false positives (predicted, not in the truth) red,
false negatives (missed) blue. :func:`plot_contours` outlines truth and prediction instead, which
shows a boundary error of a few pixels on a full-size radiograph.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from labkit.viz.display import new_figure
from labkit.viz.inputs import as_mask, data_error, to_numpy
from labkit.viz.slices import LABEL_COLOURS, PRED_COLOURS, default_window, mask_rgba

ERROR_COLOURS = {"true positive": "#00c800", "false positive": "#ff3030", "false negative": "#2f7fff"}


def page_count(count: int, per_page: int) -> int:
    """How many pages ``count`` images fill, ``per_page`` at a time (at least 1)."""
    return max(1, math.ceil(count / per_page))


def as_images(images, name: str = "images") -> list[np.ndarray]:
    """A list of 2D float arrays from ``(N, H, W)``, ``(N, H, W, 1)``, ``(N, 1, H, W)``, one
    ``(H, W)`` image, or a list of images of any sizes."""
    if isinstance(images, (list, tuple)):
        return [_as_image(image, f"{name}[{number}]") for number, image in enumerate(images)]
    array = to_numpy(images)
    if array.ndim == 2:
        return [_as_image(array, name)]
    return [_as_image(image, f"{name}[{number}]") for number, image in enumerate(array)]


def error_map(label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``0`` background, ``1`` true positive, ``2`` false positive, ``3`` false negative."""
    truth, guess = label > 0, pred > 0
    codes = np.zeros(truth.shape, dtype=np.int8)
    codes[truth & guess] = 1
    codes[~truth & guess] = 2
    codes[truth & ~guess] = 3
    return codes


def plot_gallery(images, labels=None, preds=None, ids=None, page=0, per_page=4, *,
                 alpha=0.45) -> Figure:
    """One row per image: the image, the truth, the prediction and the error map.

    Args:
        images: 2D images: ``(N, H, W)`` (a channel of size 1 first or last is fine) or a list.
        labels: truth masks, same layout, optional.
        preds: predicted masks or probabilities (read as ``>= 0.5``), optional.
        ids: a name per image (e.g. ``MCUCXR_0001_0``); numbers when None.
        page: which page to draw, from 0.
        per_page: rows per page.
        alpha: opacity of the overlays.

    Returns:
        The figure of that page. Columns without data (no labels, no preds) are left out;
        the error map needs both.

    Example:
        >>> fig = plot_gallery(batch["image"], batch["label"], pred, ids=batch["id"], page=0)
    """
    images = as_images(images)
    labels = _masks(labels, images, "labels")
    preds = _masks(preds, images, "preds")
    ids = _ids(ids, len(images))
    pages = page_count(len(images), per_page)
    if not isinstance(page, (int, np.integer)) or not 0 <= page < pages:
        raise data_error(None, f"page {page!r} does not exist: {len(images)} images make {pages} "
                        f"page(s) of {per_page}", f"pass page from 0 to {pages - 1}")
    rows = range(page * per_page, min((page + 1) * per_page, len(images)))
    columns = _columns(labels, preds)
    height = 2.7 * len(rows) + 0.9
    figure = new_figure(2.7 * len(columns), height)
    axes = np.array(figure.subplots(len(rows), len(columns), squeeze=False))
    figure.subplots_adjust(left=0.06, right=0.99, top=1 - 0.6 / height, bottom=0.3 / height,
                           wspace=0.04, hspace=0.12)
    for row, number in enumerate(rows):
        _draw_row(axes[row], columns, images[number], _at(labels, number), _at(preds, number),
                  alpha)
        axes[row, 0].set_ylabel(_row_name(ids[number], _at(labels, number), _at(preds, number)),
                                fontsize=8)
    for ax, column in zip(axes[0], columns, strict=True):
        ax.set_title(column, fontsize=10)
    figure.suptitle(f"page {page + 1} / {pages}  (images {rows.start + 1}-{rows.stop} of "
                    f"{len(images)})", fontsize=9, x=0.01, y=1 - 0.08 / height, ha="left",
                    va="top")
    if "errors" in columns:
        figure.legend(handles=[Patch(color=colour, label=name) for name, colour in
                               ERROR_COLOURS.items()], loc="lower center", ncol=3, fontsize=8,
                      frameon=False)
    return figure


def _draw_row(axes, columns, image, label, pred, alpha):
    window = default_window(image)
    for ax, column in zip(axes, columns, strict=True):
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        if column == "truth":
            ax.imshow(mask_rgba(label > 0, LABEL_COLOURS, alpha), interpolation="nearest")
        elif column == "prediction":
            ax.imshow(mask_rgba(pred > 0, PRED_COLOURS, alpha), interpolation="nearest")
        elif column == "errors":
            codes, colours = error_map(label, pred), tuple(ERROR_COLOURS.values())
            ax.imshow(mask_rgba(codes, colours, min(alpha + 0.2, 1.0)), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])


def _columns(labels, preds):
    columns = ["image"]
    columns += ["truth"] if labels is not None else []
    columns += ["prediction"] if preds is not None else []
    columns += ["errors"] if labels is not None and preds is not None else []
    return columns


def _row_name(name, label, pred):
    from labkit.metrics import dice

    return name if label is None or pred is None else f"{name}\nDice {dice(pred > 0, label > 0):.3f}"


def _as_image(image, name):
    array = to_numpy(image)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise data_error(None, f"{name} has shape {array.shape}, not a 2D image",
                        "pass images as (N, H, W) or a list of (H, W) arrays; for volumes "
                        "use plot_slices / show_volume")
    return array.astype(np.float32, copy=False)


def _masks(masks, images, name):
    if masks is None:
        return None
    masks = as_images(masks, name)
    if len(masks) != len(images):
        raise data_error(None, f"{len(masks)} {name} for {len(images)} images",
                        f"pass one entry of {name} per image")
    return [as_mask(mask, image.shape, f"{name}[{number}]")
            for number, (mask, image) in enumerate(zip(masks, images, strict=True))]


def _ids(ids, count):
    if ids is None:
        return [f"#{number}" for number in range(count)]
    ids = [str(name) for name in ids]
    if len(ids) != count:
        raise data_error(None, f"{len(ids)} ids for {count} images", "pass one id per image")
    return ids


def _at(items, number):
    return None if items is None else items[number]


CONTOUR_STYLES = {"truth": ("#00d000", "-"), "prediction": ("#ff3030", "-"),
                  "post-processed": ("#ffd000", "--")}


def plot_contours(images, labels, preds, titles=None, *, post=None, columns: int = 3) -> Figure:
    """Each image with the outlines of its truth (green), prediction (red) and, optionally, a
    post-processed prediction (dashed yellow), traced by ``skimage.measure.find_contours``.

    Args:
        images: 2D images, ``(N, H, W)`` or a list of images of any sizes.
        labels: truth masks, one per image (same size as its image).
        preds: predicted masks or probabilities (outlined at 0.5), one per image.
        titles: a title per image, optional.
        post: a second prediction per image (e.g. after post-processing), optional.
        columns: images per row.

    Example:
        >>> fig = plot_contours([image], [label], [pred], ["MCUCXR_0001_0: Dice 0.95"])
    """
    from skimage.measure import find_contours

    images = as_images(images)
    outlines = {"truth": _masks(labels, images, "labels"), "prediction": _masks(preds, images, "preds")}
    if post is not None:
        outlines["post-processed"] = _masks(post, images, "post")
    titles = _ids(titles, len(images))
    rows = math.ceil(len(images) / columns)
    columns = min(columns, len(images))
    figure = new_figure(3.4 * columns, 3.9 * rows + 0.3)
    axes = np.array(figure.subplots(rows, columns, squeeze=False)).ravel()
    for number, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if number >= len(images):
            ax.set_axis_off()
            continue
        window = default_window(images[number])
        ax.imshow(images[number], cmap="gray", vmin=window[0], vmax=window[1])
        for name, masks in outlines.items():
            colour, style = CONTOUR_STYLES[name]
            for contour in find_contours(np.asarray(masks[number] > 0, np.float32), 0.5):
                ax.plot(contour[:, 1], contour[:, 0], color=colour, linestyle=style, linewidth=1.2)
        ax.set_title(titles[number], fontsize=8)
    figure.legend(handles=[Line2D([], [], color=colour, linestyle=style, label=name)
                           for name, (colour, style) in CONTOUR_STYLES.items() if name in outlines],
                  loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.3 / (3.9 * rows + 0.3) + 0.03,
                           wspace=0.05, hspace=0.15)
    return figure
