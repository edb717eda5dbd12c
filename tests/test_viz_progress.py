"""is_headless and progress: quiet without a front end, tqdm with one."""

import pytest

import labkit.viz.progress_bar as progress_module
from labkit.viz import is_headless, progress
from labkit.viz.progress_bar import SilentBar


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("yes", True),
                                             ("0", True), ("", True)])
def test_outside_a_kernel_always_headless(monkeypatch, value, expected):
    monkeypatch.setenv("LABKIT_HEADLESS", value)
    assert is_headless() is expected


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("on", True),
                                             ("0", False), ("false", False), ("no", False)])
def test_in_a_kernel_the_variable_decides(monkeypatch, value, expected):
    monkeypatch.setattr("labkit.viz.display.in_kernel", lambda: True)
    monkeypatch.setenv("LABKIT_HEADLESS", value)
    assert is_headless() is expected
    monkeypatch.delenv("LABKIT_HEADLESS")
    assert is_headless() is False


def test_headless_progress_iterates_silently(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    bar = progress(range(5), desc="train")
    assert isinstance(bar, SilentBar) and len(bar) == 5
    assert list(bar) == [0, 1, 2, 3, 4] and bar.n == 5
    with progress(total=3) as manual:
        manual.update(2)
        manual.set_postfix(loss=0.5)
        assert manual.n == 2 and len(manual) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_front_end_progress_is_tqdm(monkeypatch):
    monkeypatch.setattr(progress_module, "is_headless", lambda: False)
    from tqdm.auto import tqdm

    bar = progress([1, 2, 3], desc="epoch 1", leave=True)
    assert isinstance(bar, tqdm)
    assert bar.desc.startswith("epoch 1") and bar.total == 3 and bar.leave is True
    assert list(bar) == [1, 2, 3]
