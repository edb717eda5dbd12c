"""A plain-text table of per-case (or per-variant) results with a mean row, for both labs.

Example:
    >>> print_table([{"id": "case_1", "dice": 0.9, "hd95_mm": 3.0},
    ...              {"id": "case_2", "dice": 0.7, "hd95_mm": None}], ["dice", "hd95_mm"])
    case                dice     hd95_mm
    case_1             0.900       3.000
    case_2             0.700         n/a
    mean               0.800       3.000
"""

from __future__ import annotations

import math


def mean_of(rows: list[dict], key: str) -> float | None:
    """The mean of ``row[key]`` over the rows that have a finite number there (None if none do)."""
    values = [float(row[key]) for row in rows if _number(row.get(key)) is not None]
    return sum(values) / len(values) if values else None


def print_table(rows: list[dict], columns: list[str], *, name: str = "id", mean: bool = True,
                width: int = 12, digits: int = 3) -> None:
    """Print one line per row (its ``name`` column, then ``columns``) and, optionally, their mean.

    A missing, None, NaN or infinite value shows as ``n/a`` and is left out of the mean (an
    HD95 of an empty prediction is infinite). Text and whole numbers are printed as they are.
    """
    first = max([len(str(row.get(name, ""))) for row in rows] + [len(name), 12]) + 2
    print(f"{'case' if name == 'id' else name:<{first}}" + "".join(f"{column:>{width}}" for column in columns))
    shown = list(rows)
    if mean and rows:
        shown.append({name: "mean", **{column: mean_of(rows, column) for column in columns}})
    for row in shown:
        cells = [_cell(row.get(column), digits) for column in columns]
        print(f"{str(row.get(name, '')):<{first}}" + "".join(f"{cell:>{width}}" for cell in cells))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(value, digits: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"
