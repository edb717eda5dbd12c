"""Where the pictures go: a live front end, an executed notebook, or a plain script.

Every figure in :mod:`labkit.viz` is a :class:`matplotlib.figure.Figure` with its own Agg
canvas, made without ``pyplot``: nothing is kept in pyplot's list of open figures, so the
inline backend never shows a figure twice and a script can call ``fig.savefig(path)``.
"""

from __future__ import annotations

import io
import os
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_FALSE_WORDS = {"", "0", "false", "no", "off"}


def in_kernel() -> bool:
    """Whether this code runs inside an IPython kernel (a Jupyter front end may be listening)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def is_headless() -> bool:
    """Whether live drawing is off: ``LABKIT_HEADLESS`` is set to anything but
    ``0``/``false``/``no``/``off``, or no IPython kernel runs this code (a script, a test)."""
    flag = os.environ.get("LABKIT_HEADLESS")
    if flag is not None and flag.strip().lower() not in _FALSE_WORDS:
        return True
    return not in_kernel()


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure of ``width`` x ``height`` inches with an Agg canvas, outside pyplot."""
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_to_png(figure: Figure) -> bytes:
    """The figure rendered as PNG bytes (the figure's own size and dpi).

    Light compression: encoding, not drawing, is the slow part of a large figure, and the bytes
    only travel to a local browser.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def png_output(figure: Figure):
    """An ``IPython.display.Image`` of the figure: one ``image/png`` output, any backend."""
    from IPython.display import Image

    return Image(data=figure_to_png(figure), format="png")


def show_static(figure: Figure) -> None:
    """Show ``figure`` once as a static picture in a kernel; do nothing in a plain script.

    The picture is stored in the notebook as ``image/png``, so an executed notebook exported to
    HTML still shows it.
    """
    if not in_kernel():
        return
    from IPython.display import display

    display(png_output(figure))
