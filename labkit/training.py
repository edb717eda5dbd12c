"""What both labs' training loops share and that needs no framework: stopping on a NaN loss.

``labkit.torch_utils`` and ``labkit.tf_utils`` re-export these names, so each lab imports them
from its own framework's helpers.
"""

from __future__ import annotations

import math


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; training stopped before saving that epoch."""


DIVERGED_ADVICE = ("Likely causes: a learning rate too high, a bad input (NaN / Inf voxels or pixels, "
                   "an empty or constant image), or a float16 overflow under mixed precision. The last "
                   "checkpoint on disk is the last good epoch and was not touched: lower lr "
                   "(e.g. by 10x), check the data (python -m labkit doctor), or turn mixed "
                   "precision off, then run the training cell again to resume from it.")


def check_loss(loss, step: int | None = None) -> float:
    """Return ``loss`` as a float, or raise :class:`TrainingDiverged` when it is NaN or infinite.

    Args:
        loss: the batch's loss (a number, or a one-element PyTorch / TensorFlow tensor).
        step: the batch number within the epoch, counted from 0, for the message.

    Raises:
        TrainingDiverged: saying what happened, the likely causes and what to do.
    """
    value = float(loss)
    if not math.isfinite(value):
        where = "" if step is None else f" at training step {step + 1} of this epoch"
        raise TrainingDiverged(f"the training loss became {value}{where}, so training stopped. "
                               f"{DIVERGED_ADVICE}")
    return value
