"""The exercise mechanism shared by both labs.

A check compares the student's code with a trusted peer (a library implementation) or with
analytic values, never with a second copy of the solution. It prints one stable line (nbval
compares it) and never raises into the notebook.
"""

from __future__ import annotations

import textwrap
import traceback
from typing import Callable


class CheckFailed(Exception):
    """Raised by a checker with a message for the student ("your output has 2 channels, ...")."""


class Exercise:
    """One exercise: a checker, a list of hints and a solution text.

    Args:
        number: the exercise number shown in the notebook.
        title: a few words ("Dice loss").
        checker: called with what the student passes to :meth:`check`; returns a short
            success detail (or None) and raises :class:`CheckFailed` with a helpful message.
        hints: hints, from gentle to explicit.
        solution: the reference solution as source text, shown by :meth:`solution`.

    Example:
        >>> ex = Exercise(1, "double", lambda f: None if f(2) == 4 else _fail("f(2) != 4"), ["x*2"], "f = lambda x: 2 * x")
        >>> ex.check(lambda x: 2 * x)
        Exercise 1 (double): correct
        True
    """

    def __init__(self, number: int, title: str, checker: Callable[..., str | None],
                 hints: list[str], solution: str):
        self.number = number
        self.title = title
        self._checker = checker
        self._hints = list(hints)
        self._solution = textwrap.dedent(solution).strip()

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"

    def check(self, *args, **kwargs) -> bool:
        """Check the student's answer; print one line saying what was found. Never raises."""
        try:
            detail = self._checker(*args, **kwargs)
        except CheckFailed as failure:
            print(f"{self.label}: not yet - {failure}")
            return False
        except NotImplementedError:
            print(f"{self.label}: not implemented yet - fill in the cell above, then run this check again")
            return False
        except Exception as error:  # the student's code crashed: say where, do not re-raise
            where = _last_frame(error)
            print(f"{self.label}: your code raised {type(error).__name__}: {error}{where}")
            return False
        print(f"{self.label}: correct" + (f" - {detail}" if detail else ""))
        return True

    def hint(self, n: int = 1) -> None:
        """Print hint ``n`` (1-based); hints go from gentle to explicit."""
        if not self._hints:
            print(f"{self.label}: no hints for this one.")
            return
        n = min(max(int(n), 1), len(self._hints))
        more = f" (hint {n} of {len(self._hints)})" if len(self._hints) > 1 else ""
        print(f"{self.label}{more}: {self._hints[n - 1]}")

    def solution(self) -> None:
        """Print the reference solution."""
        print(f"{self.label} - one possible solution:\n\n{self._solution}")

    def __repr__(self) -> str:
        return f"<{self.label}: .check(...), .hint(n), .solution()>"


def _fail(message: str):
    raise CheckFailed(message)


def _last_frame(error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (in {last.name}, line {last.lineno})"
