"""Viewing: slices of volumes, X-ray galleries, live training curves, progress bars, tables.

Pure matplotlib functions underneath (``plot_slices``, ``plot_errors``, ``plot_gallery``,
``plot_curves``, ``plot_variants``, ``plot_shape_trace``) that return a figure and work in a
script or a test with the Agg backend; thin ipywidgets viewers on top (``SliceViewer``,
``Gallery``, ``ThresholdViewer``) for JupyterLab; ``print_table`` for per-case results. When
headless (``LABKIT_HEADLESS=1``, or no IPython kernel) nothing live is drawn: the viewers show
one static figure, the training board prints one line per epoch and progress bars are silent.

Example:
    >>> from labkit.viz import show_volume, TrainingBoard, progress
    >>> show_volume(case)                      # three planes, sliders, overlays
    >>> board = TrainingBoard(max_epochs=20)   # board.update(epoch, train_loss=...)
"""

from labkit.viz.board import TrainingBoard, plot_curves, plot_variants
from labkit.viz.display import is_headless
from labkit.viz.errors import plot_errors
from labkit.viz.gallery import plot_gallery
from labkit.viz.progress_bar import progress
from labkit.viz.shapes import plot_shape_trace
from labkit.viz.slices import plot_slices
from labkit.viz.tables import mean_of, print_table
from labkit.viz.widgets import Gallery, SliceViewer, ThresholdViewer, show_gallery, show_volume

__all__ = ["Gallery", "SliceViewer", "ThresholdViewer", "TrainingBoard", "is_headless", "mean_of",
           "plot_curves", "plot_errors", "plot_gallery", "plot_shape_trace", "plot_slices",
           "plot_variants", "print_table", "progress", "show_gallery", "show_volume"]
