"""The exercise mechanism shared by both labs.

A check compares the student's code with a trusted peer (a library implementation) or with
analytic values, never with a second copy of the solution. It prints one stable line (nbval
compares it) and never raises into the notebook. The solution text comes from the notebook:
``make export`` writes each exercise's solution to ``labkit/labs/<lab>_solutions.py``.
"""

from __future__ import annotations

import importlib
import io
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Callable

from labkit.viz.progress_bar import quiet


class CheckFailed(Exception):
    """Raised by a checker with a message for the student ("your output has 2 channels, ...")."""


class Exercise:
    """One exercise: a checker, a list of hints, and the solution from the lab's notebook.

    Args:
        number: the exercise number in the notebook (1, 2, ... in notebook order).
        title: a few words ("Dice loss").
        checker: called with what the student passes to :meth:`check`; returns a short
            success detail (or None) and raises :class:`CheckFailed` with a helpful message.
        hints: hints, from gentle to explicit.
        lab: the lab whose notebook holds the solution (``"vnet"``: exercise ``number`` of
            ``labkit/labs/vnet_solutions.py``).

    Example:
        >>> ex = Exercise(1, "double", lambda f: None if f(2) == 4 else _fail("f(2) != 4"), ["x*2"], "demo")
        >>> ex.check(lambda x: 2 * x)
        Exercise 1 (double): correct
        True
    """

    def __init__(self, number: int, title: str, checker: Callable[..., str | None],
                 hints: list[str], lab: str):
        self.number = number
        self.title = title
        self.lab = lab
        self._checker = checker
        self._hints = list(hints)

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"

    def check(self, *args, **kwargs) -> bool:
        """Check the student's answer; print one line saying what was found. Never raises.

        Whatever the student's code prints or shows while it is checked (progress bars, log
        lines, warnings) is hidden, so the verdict is the only output.
        """
        try:
            with quiet(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
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

    def solution_text(self) -> str | None:
        """The notebook's solution as source text, or None when ``make export`` has not stored it."""
        try:
            solutions = importlib.import_module(f"labkit.labs.{self.lab}_solutions").SOLUTIONS
            return solutions[self.number][1]
        except Exception:  # no generated file yet, or one from another version of the notebook
            return None

    def solution(self) -> None:
        """Print the reference solution (the instructor notebook's code)."""
        text = self.solution_text()
        if text is None:
            print(f"{self.label}: no stored solution found (labkit/labs/{self.lab}_solutions.py has no "
                  f"exercise {self.number}); run `make export` in the course folder, or ask your instructor")
            return
        print(f"{self.label} - one possible solution:\n\n{text.rstrip()}")

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
