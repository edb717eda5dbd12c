"""Progress bars: tqdm in a front end, silent when headless."""

from __future__ import annotations

from collections.abc import Iterable

from labkit.viz.display import is_headless


class SilentBar:
    """What :func:`progress` gives when headless: iterates, counts, and prints nothing.

    It has the tqdm methods a training loop calls (``update``, ``set_postfix``,
    ``set_description``, ``close``) and works as a context manager.
    """

    def __init__(self, iterable: Iterable | None = None, total: int | None = None):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.n = 0

    def __iter__(self):
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.n += 1

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this progress bar has no length")
        return self.total

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
             leave: bool = False):
    """Wrap ``iterable`` in a progress bar (``tqdm.auto``) when a front end is watching.

    Args:
        iterable: what to loop over; None for a bar moved by hand with ``bar.update(n)``.
        total: the number of steps when ``len(iterable)`` does not exist.
        desc: a short label in front of the bar (e.g. ``"epoch 3"``).
        leave: keep the finished bar on screen.

    Returns:
        A tqdm bar, or a :class:`SilentBar` with the same methods when headless.

    Example:
        >>> for batch in progress(batches, desc="train"):
        ...     pass
    """
    if is_headless():
        return SilentBar(iterable, total)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave)


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
