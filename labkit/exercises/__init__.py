"""Self-checking exercises: ``ex.check(...)``, ``ex.hint(n)``, ``ex.solution()``.

Each lab has its own module (``labkit.exercises.vnet`` for Lab 1, ``labkit.exercises.cfcm``
for Lab 2), so a lab kernel imports only its own framework.
"""

from labkit.exercises.base import CheckFailed, Exercise

__all__ = ["CheckFailed", "Exercise"]
