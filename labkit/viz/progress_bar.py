"""Progress bars: tqdm, switched off when headless and while an exercise check runs."""

from __future__ import annotations

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
    """Wrap ``iterable`` in a ``tqdm.auto`` bar, disabled when headless or inside :func:`quiet`
    (a disabled bar still iterates and has every tqdm method; it just draws nothing).

    The arguments are tqdm's: ``desc`` a label in front of the bar (``"epoch 3"``), ``iterable``
    None for a bar moved by hand with ``bar.update(n)``, ``leave`` to keep the finished bar.

    Example:
        >>> for batch in progress(batches, desc="train"):
        ...     pass
    """
    from tqdm.auto import tqdm

    options.setdefault("mininterval", REDRAW_SECONDS)
    return tqdm(iterable, total=total, desc=desc, leave=leave,
                disable=bool(_quiet_depth) or is_headless(), **options)
