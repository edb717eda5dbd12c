"""Progress bars: tqdm's text bar, switched off when headless and while an exercise check runs."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from labkit.viz.display import is_headless

REDRAW_SECONDS = 1.0  # a live bar redraws at most this often, so drawing never slows the loop
_quiet_depth = 0


@contextmanager
def quiet() -> Iterator[None]:
    """Silence every :func:`progress` bar made inside this block (``Exercise.check`` uses it)."""
    global _quiet_depth
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
             leave: bool = False, **options):
    """Wrap ``iterable`` in a tqdm text bar on stdout, disabled when headless or inside :func:`quiet`
    (a disabled bar still iterates and has every tqdm method; it just draws nothing).

    The arguments are tqdm's: ``desc`` a label in front of the bar (``"epoch 3"``), ``iterable``
    None for a bar moved by hand with ``bar.update(n)``, ``leave`` to keep the finished bar.

    A text bar, not ``tqdm.auto``'s widget: a widget bar costs about 18 kernel messages (a dozen
    widgets opened, then updated and closed), a text bar two or three. Lab 1's cpu training cell
    draws 120 bars (60 epochs, train and validation); as widgets they overflowed the kernel's
    message queue while plain ``pytest --nbval-lax`` waited for the cell, and nbval then timed out
    waiting for the cell's end. On stdout, not stderr, so JupyterLab does not paint it red.

    Example:
        >>> for batch in progress(batches, desc="train"):
        ...     pass
    """
    from tqdm import tqdm

    options.setdefault("mininterval", REDRAW_SECONDS)
    options.setdefault("file", sys.stdout)
    return tqdm(iterable, total=total, desc=desc, leave=leave,
                disable=bool(_quiet_depth) or is_headless(), **options)
