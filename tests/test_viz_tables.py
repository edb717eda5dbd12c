"""print_table: aligned columns, a mean row that skips what is not a number; plot_shape_trace."""

import math

import pytest

from labkit.data.errors import DataError
from labkit.viz import mean_of, plot_shape_trace, print_table


def test_table_has_one_line_per_row_and_a_mean(capsys):
    rows = [{"id": "case_1", "dice": 0.9, "hd95_mm": 3.0, "steps": 12},
            {"id": "case_2", "dice": 0.7, "hd95_mm": math.inf, "steps": 6}]
    print_table(rows, ["dice", "hd95_mm", "steps"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["case", "dice", "hd95_mm", "steps"]
    assert lines[1].split() == ["case_1", "0.900", "3.000", "12"]
    assert lines[2].split() == ["case_2", "0.700", "n/a", "6"]  # infinity is not a number to average
    assert lines[3].split() == ["mean", "0.800", "3.000", "9.000"]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_table_without_mean_and_with_another_name_column(capsys):
    print_table([{"variant": "BatchNorm", "final Dice": None}], ["final Dice"], name="variant",
                mean=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "variant" and lines[1].split() == ["BatchNorm", "n/a"]
    assert len(lines) == 2


def test_mean_of_skips_missing_values():
    assert mean_of([{"dice": 0.5}, {"dice": None}, {}, {"dice": 1.0}], "dice") == pytest.approx(0.75)
    assert mean_of([{"dice": None}], "dice") is None


def test_shape_trace_places_each_step_by_its_level():
    trace = [("input", (1, 2, 16, 16, 8)), ("encoder 1", (1, 4, 16, 16, 8)),
             ("down 1", (1, 8, 8, 8, 4)), ("bottom", (1, 8, 8, 8, 4)), ("up 1", (1, 4, 16, 16, 8)),
             ("+ kept 1", (1, 4, 16, 16, 8))]
    figure = plot_shape_trace(trace, links=[("encoder 1", "+ kept 1")])
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert "8 ch\n8x8x4" in texts and "bottom" in texts
    levels = {text.get_text(): text.get_position()[1] for text in figure.axes[0].texts}
    assert levels["4 ch\n16x16x8"] == 0 and levels["8 ch\n8x8x4"] == -1
    with pytest.raises(DataError, match="names a step not in the trace"):
        plot_shape_trace(trace, links=[("encoder 9", "+ kept 1")])
