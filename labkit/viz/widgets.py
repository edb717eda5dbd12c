"""Thin ipywidgets viewers over the pure plotting functions.

Each viewer keeps its settings, draws them with the matching ``plot_*`` function and puts the
PNG into an ``ipywidgets.Image``: one picture replaced in place, nothing but JupyterLab and
ipywidgets needed in the browser. Evaluated in a cell (or passed to ``display``) a viewer shows
its widget; headless it shows one static figure instead, so an executed notebook exported to
HTML still has the picture. ipywidgets is imported only when a widget is built.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from labkit.viz.display import figure_to_png, is_headless, show_static
from labkit.viz.errors import plot_errors
from labkit.viz.gallery import as_images, page_count, plot_gallery
from labkit.viz.inputs import data_error, volume_inputs
from labkit.viz.slices import OVERLAYS, PLANES, default_index, default_window, plot_slices

OVERLAY_OFF = "off"


class _Viewer:
    """Shared display logic: widget in a front end, static figure when headless. A viewer class
    gives ``figure()`` (a new figure of its current settings) and ``_controls(ipywidgets)``."""

    css_class = "labkit-viewer"

    def __init__(self):
        self._widget = None
        self._picture = None
        self._caption = None

    @property
    def widget(self):
        """The ipywidgets box (built on first use)."""
        if self._widget is None:
            import ipywidgets

            self._picture = ipywidgets.Image(format="png", layout={"max_width": "100%"})
            self._picture.add_class(f"{self.css_class}-image")
            self._caption = ipywidgets.Label()
            self._caption.add_class(f"{self.css_class}-caption")
            self._widget = ipywidgets.VBox(self._controls(ipywidgets) + [self._picture, self._caption])
            self._widget.add_class(self.css_class)
            self.redraw()
        return self._widget

    def redraw(self) -> None:
        """Draw the current settings into the widget's picture (if the widget exists)."""
        if self._picture is not None:
            self._picture.value = figure_to_png(self.figure())
            self._caption.value = self.caption()  # after the picture: says it is up to date

    def caption(self) -> str:
        """A short description of what the picture shows (the line under it)."""
        return type(self).__name__

    def _ipython_display_(self):
        if is_headless():
            show_static(self.figure())
        else:
            from IPython.display import display

            display(self.widget)

    def _watch(self, control, setting: str, convert=lambda value: value):
        """Copy ``control``'s value into ``self.<setting>`` and redraw on every change."""
        def changed(change):
            setattr(self, setting, convert(change["new"]))
            self.redraw()

        control.observe(changed, names="value")
        return control


class SliceViewer(_Viewer):
    """Axial, coronal and sagittal slices with sliders, overlays and window / level.

    Args:
        image: ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)`` array, a NIfTI path, or a case
            dict (``image``, ``label``, optional ``pred``, ``image_meta['spacing']``).
        label: truth class map on the image grid (or a NIfTI path), optional.
        pred: prediction on the image grid (or a NIfTI path), optional.
        spacing: voxel size in mm (x, y, z); from the case or the file, else 1 mm, when None.
        channel_names: a name per channel, e.g. ``["T2", "ADC"]``.
        class_names: ``{class: name}`` for the legend, e.g. ``{1: "PZ", 2: "TZ"}``.

    The settings (``channel``, ``index``, ``overlay``, ``alpha``, ``window``) are plain
    attributes; change them and call :meth:`redraw`, or use the controls.

    Example:
        >>> SliceViewer(case, channel_names=["T2", "ADC"])   # last line of a cell
    """

    css_class = "labkit-slice-viewer"

    def __init__(self, image, label=None, pred=None, spacing=None, channel_names=None,
                 class_names=None):
        super().__init__()
        self.volume, self.label, self.pred, self.spacing = volume_inputs(image, label, pred, spacing)
        count = self.volume.shape[0]
        self.channel_names = list(channel_names or [f"channel {n}" for n in range(count)])
        if len(self.channel_names) != count:
            raise data_error(None, f"{len(self.channel_names)} channel names for {count} channels",
                            "pass one name per image channel, e.g. ['T2', 'ADC']")
        self.class_names = class_names
        self.channel = 0
        self.index = list(default_index(self.volume.shape[1:], self.label, self.pred))
        self.overlay = "fill"
        self.alpha = 0.4
        self.window = default_window(self.volume[0])

    def figure(self) -> Figure:
        """The three planes for the current settings, as a new figure."""
        overlay = self.overlay if self.overlay in OVERLAYS else "fill"
        shown = self.overlay != OVERLAY_OFF
        return plot_slices(self.volume, self.label if shown else None,
                           self.pred if shown else None, spacing=self.spacing,
                           index=tuple(self.index), channel=self.channel, overlay=overlay,
                           alpha=self.alpha, window=self.window,
                           channel_name=self.channel_names[self.channel],
                           class_names=self.class_names)

    def caption(self) -> str:
        """E.g. ``"T2 · x = 20, y = 16, z = 14"``."""
        position = ", ".join(f"{axis} = {value}" for axis, value in zip("xyz", self.index, strict=True))
        return f"{self.channel_names[self.channel]} · {position}"

    def _controls(self, ipywidgets) -> list:
        sliders = [self._index_slider(ipywidgets, plane) for plane in reversed(PLANES)]
        window = self._window_control(ipywidgets)
        overlay = ipywidgets.Dropdown(options=[*OVERLAYS, OVERLAY_OFF], value=self.overlay,
                                      description="overlay", layout={"width": "200px"},
                                      disabled=self.label is None and self.pred is None)
        opacity = ipywidgets.FloatSlider(value=self.alpha, min=0.0, max=1.0, step=0.05,
                                         description="opacity", continuous_update=False)
        top = [self._channel_control(ipywidgets, window), self._watch(overlay, "overlay"),
               self._watch(opacity, "alpha", float)]
        return [ipywidgets.HBox(top), ipywidgets.HBox(sliders), window]

    def _index_slider(self, ipywidgets, plane):
        title, axis = plane[0], plane[1]
        slider = ipywidgets.IntSlider(value=self.index[axis], min=0,
                                      max=self.volume.shape[axis + 1] - 1,
                                      description=f"{'xyz'[axis]} ({title.lower()})",
                                      continuous_update=False, style={"description_width": "initial"})
        slider.add_class(f"labkit-slider-{'xyz'[axis]}")

        def moved(change):
            self.index[axis] = int(change["new"])
            self.redraw()

        slider.observe(moved, names="value")
        return slider

    def _channel_control(self, ipywidgets, window):
        """Channel choice; a new channel also gets its own default window."""
        options = [(name, number) for number, name in enumerate(self.channel_names)]
        control = ipywidgets.Dropdown(options=options, value=self.channel, description="channel",
                                      disabled=len(options) == 1, layout={"width": "220px"})

        def chosen(change):
            self.channel = int(change["new"])
            new_window = default_window(self.volume[self.channel])
            if tuple(window.value) != new_window:
                window.value = new_window  # its observer redraws
            else:
                self.redraw()

        control.observe(chosen, names="value")
        return control

    def _window_control(self, ipywidgets):
        """A (low, high) range slider: its centre is the level, its length the width."""
        windows = [default_window(channel) for channel in self.volume]
        low = min([float(self.volume.min())] + [window[0] for window in windows])
        high = max([float(self.volume.max())] + [window[1] for window in windows])
        control = ipywidgets.FloatRangeSlider(value=self.window, min=low, max=high,
                                              step=(high - low) / 200,
                                              description="window", continuous_update=False,
                                              readout_format=".3g", layout={"width": "60%"})
        return self._watch(control, "window", tuple)

    def __repr__(self) -> str:
        return (f"SliceViewer(shape={tuple(self.volume.shape)}, spacing={self.spacing}, "
                f"label={self.label is not None}, pred={self.pred is not None})")


class Gallery(_Viewer):
    """Pages of 2D images with truth, prediction and error map; previous / next buttons.

    Args:
        images, labels, preds, ids, per_page: as for :func:`labkit.viz.plot_gallery`.

    Example:
        >>> Gallery(batch["image"], batch["label"], pred, ids=batch["id"])
    """

    css_class = "labkit-gallery"

    def __init__(self, images, labels=None, preds=None, ids=None, per_page=4):
        super().__init__()
        self.images, self.labels, self.preds, self.ids = images, labels, preds, ids
        self.per_page = int(per_page)
        self.pages = page_count(len(as_images(images)), self.per_page)
        self.page = 0
        plot_gallery(images, labels, preds, ids, page=0, per_page=self.per_page)  # check inputs

    def figure(self) -> Figure:
        """The current page as a new figure."""
        return plot_gallery(self.images, self.labels, self.preds, self.ids, page=self.page,
                            per_page=self.per_page)

    def caption(self) -> str:
        """E.g. ``"page 2 / 3"``."""
        return f"page {self.page + 1} / {self.pages}"

    def _controls(self, ipywidgets) -> list:
        previous = ipywidgets.Button(description="◀ previous", layout={"width": "110px"})
        following = ipywidgets.Button(description="next ▶", layout={"width": "110px"})
        slider = ipywidgets.IntSlider(value=1, min=1, max=self.pages, description="page",
                                      continuous_update=False, disabled=self.pages == 1)
        self._watch(slider, "page", lambda value: int(value) - 1)
        previous.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, 1)))
        following.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, self.pages)))
        return [ipywidgets.HBox([previous, following, slider])]


class ThresholdViewer(_Viewer):
    """Cases with their hits, false positives and misses at a threshold, and the Dice it gives.

    A dropdown picks the case, a slider the threshold on the predicted probability. Headless,
    each case is drawn once at the starting threshold.

    Args:
        cases: dicts with ``id``, ``image`` (``(C, X, Y, Z)`` or ``(X, Y, Z)``), ``label`` and
            ``prob`` (``(X, Y, Z)``, on the image's grid) and an optional ``note`` shown before
            the id (e.g. ``"best"``).
        threshold: the starting threshold (e.g. the one chosen on the validation cases).
        spacing: voxel size in mm (x, y, z).

    Example:
        >>> ThresholdViewer([{"id": "prostate_16", "note": "worst", "image": ..., "label": ...,
        ...                   "prob": ...}], threshold=0.5, spacing=(3, 3, 3))
    """

    css_class = "labkit-threshold-viewer"

    def __init__(self, cases, threshold=0.5, spacing=None):
        super().__init__()
        self.cases = list(cases)
        missing = [sorted({"id", "image", "label", "prob"} - set(case)) for case in self.cases]
        if not self.cases or any(missing):
            raise data_error(None, f"ThresholdViewer needs cases with id, image, label and prob "
                            f"(missing: {next(filter(None, missing), 'all cases')})",
                            "pass a list of dicts {'id', 'image', 'label', 'prob'}")
        self.threshold = float(threshold)
        self.spacing = spacing
        self.case = 0

    def dice(self, case: int | None = None, threshold: float | None = None) -> float:
        """Dice of a case (the shown one by default) at a threshold (the current one by default)."""
        from labkit.metrics import dice

        chosen = self.cases[self.case if case is None else case]
        cut = self.threshold if threshold is None else threshold
        prob, label = np.asarray(chosen["prob"]), np.asarray(chosen["label"])
        label = label[0] if label.ndim == prob.ndim + 1 else label  # a channel of size 1
        return dice(prob > cut, label > 0.5)

    def figure(self, case: int | None = None) -> Figure:
        """The errors of a case (the shown one by default) at the current threshold."""
        case = self.case if case is None else case
        chosen = self.cases[case]
        return plot_errors(chosen["image"], chosen["label"], np.asarray(chosen["prob"]) > self.threshold,
                           spacing=self.spacing, title=f"{self._name(case)} · threshold "
                           f"{self.threshold:.2f} · Dice {self.dice(case):.3f}")

    def caption(self) -> str:
        """E.g. ``"worst prostate_16: Dice 0.712 at threshold 0.45"``."""
        return f"{self._name(self.case)}: Dice {self.dice():.3f} at threshold {self.threshold:.2f}"

    def _name(self, case: int) -> str:
        chosen = self.cases[case]
        return f"{chosen.get('note', '')} {chosen['id']}".strip()

    def _controls(self, ipywidgets) -> list:
        options = [(self._name(number), number) for number in range(len(self.cases))]
        case = ipywidgets.Dropdown(options=options, value=self.case, description="case")
        threshold = ipywidgets.FloatSlider(value=self.threshold, min=0.05, max=0.95, step=0.05,
                                           description="threshold", continuous_update=False,
                                           readout_format=".2f")
        return [ipywidgets.HBox([self._watch(case, "case", int),
                                 self._watch(threshold, "threshold", float)])]

    def _ipython_display_(self):
        if is_headless():
            for case in range(len(self.cases)):
                show_static(self.figure(case))
        else:
            super()._ipython_display_()


def show_volume(image, label=None, pred=None, spacing=None, channel_names=None,
                class_names=None) -> None:
    """Show a :class:`SliceViewer`: the widget in a front end, a static figure headless."""
    from IPython.display import display

    display(SliceViewer(image, label, pred, spacing, channel_names, class_names))


def show_gallery(images, labels=None, preds=None, ids=None, per_page=4) -> None:
    """Show a :class:`Gallery`: the widget in a front end, its first page headless."""
    from IPython.display import display

    display(Gallery(images, labels, preds, ids, per_page))
