"""labkit.runs: run folders, the one resume rule, history, best epoch, metrics.json (no framework)."""

from __future__ import annotations

import json
import math

import pytest

from labkit import runs


class FakeCheckpoint:
    """Remembers what the run asked for; 'restores' the epochs of the last save in its folder."""

    def __init__(self):
        self.saved, self.cleared, self.best_loaded = [], 0, 0

    def restore(self, folder):
        path = folder / "fake.ckpt"
        return int(path.read_text()) if path.is_file() else None

    def save(self, folder, epochs, best):
        self.saved.append((folder, epochs, best))
        if folder is not None:
            (folder / "fake.ckpt").write_text(str(epochs))

    def load_best(self, folder):
        self.best_loaded += 1
        return True

    def clear(self, folder):
        self.cleared += 1
        (folder / "fake.ckpt").unlink(missing_ok=True)


SETTINGS = {"lr": 0.001, "max_epochs": 3, "image_size": (8, 8)}


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_RUNS", str(tmp_path))
    return tmp_path


def _train(run, max_epochs, dice=(0.2, 0.5, 0.5, 0.1)):
    for epoch in run.epochs(max_epochs):
        run.end_epoch(train_loss=1 - dice[epoch], validation_dice=dice[epoch])


def test_a_new_run_writes_settings_history_and_checkpoints(runs_root, capsys):
    checkpoint = FakeCheckpoint()
    run = runs.Run("vnet", "smoke", "a", SETTINGS, checkpoint)
    assert run.folder == runs_root / "vnet-smoke-a" and "new run in vnet-smoke-a" in capsys.readouterr().out
    _train(run, 3)
    assert run.history["epoch"] == [1, 2, 3]
    assert run.history["validation_dice"] == [0.2, 0.5, 0.5]
    assert len(run.history["seconds"]) == 3 and run.wall_time_s >= 0
    # the later epoch wins a tie, and best.pt follows each new best
    assert run.best_epoch == 3 and [best for _, _, best in checkpoint.saved] == [True, True, True]
    assert json.loads((run.folder / "settings.json").read_text()) == {**SETTINGS, "image_size": [8, 8]}
    assert json.loads((run.folder / "history.json").read_text())["epoch"] == [1, 2, 3]


def test_a_run_resumes_after_its_last_finished_epoch_and_may_train_longer(runs_root, capsys):
    _train(runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint()), 2)
    capsys.readouterr()
    again = runs.Run("vnet", "smoke", "a", {**SETTINGS, "max_epochs": 4}, FakeCheckpoint())
    assert "resuming vnet-smoke-a after epoch 2" in capsys.readouterr().out
    assert list(again.epochs(4)) == [2, 3]
    assert again.history["epoch"] == [1, 2]


def test_history_beyond_the_checkpoint_is_dropped(runs_root):
    """A crash between the checkpoint and history.json: the checkpoint decides where to go on."""
    run = runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint())
    _train(run, 2)
    (run.folder / "fake.ckpt").write_text("1")
    assert runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint()).history["epoch"] == [1]


def test_history_is_written_before_the_checkpoint(runs_root):
    """A kill between the two writes must leave history ahead (cut on resume), never behind:
    behind, the resumed run would replay an epoch on weights that had already learned it."""
    order = []

    class Watching(FakeCheckpoint):
        def save(self, folder, epochs, best):
            history = json.loads((folder / "history.json").read_text())
            order.append(len(history["epoch"]))
            super().save(folder, epochs, best)

    _train(runs.Run("vnet", "smoke", "a", SETTINGS, Watching()), 2)
    assert order == [1, 2], "history.json did not hold the epoch when its checkpoint was saved"


def test_history_behind_the_checkpoint_resumes_after_the_checkpoint(runs_root):
    """A folder copied half-way: the checkpoint's epochs count, the missing values are NaN."""
    run = runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint())
    _train(run, 1)
    (run.folder / "fake.ckpt").write_text("2")
    resumed = runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint())
    assert resumed.epochs_done == 2 and resumed.history["epoch"] == [1, 2]
    assert resumed.history["validation_dice"][0] == 0.2 and math.isnan(resumed.history["validation_dice"][1])
    assert list(resumed.epochs(3)) == [2]


@pytest.mark.parametrize("change", [{"lr": 0.01}, {"image_size": (16, 16)}, {"seed": 1}])
def test_any_change_but_max_epochs_is_refused_with_what_changed(runs_root, change):
    _train(runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint()), 1)
    with pytest.raises(runs.SettingsChanged) as caught:
        runs.Run("vnet", "smoke", "a", {**SETTINGS, **change}, FakeCheckpoint())
    message = str(caught.value)
    key = next(iter(change))
    assert f"{key} " in message and "only max_epochs may change" in message
    assert "RUN_NAME" in message and "--run-name" in message and "--fresh" in message


def test_resume_false_starts_afresh(runs_root, capsys):
    _train(runs.Run("vnet", "smoke", "a", SETTINGS, FakeCheckpoint()), 2)
    checkpoint = FakeCheckpoint()
    fresh = runs.Run("vnet", "smoke", "a", {**SETTINGS, "lr": 0.5}, checkpoint, resume=False)
    assert fresh.epochs_done == 0 and checkpoint.cleared == 1
    assert "new run" in capsys.readouterr().out.splitlines()[-1]


def test_other_processes_write_nothing(runs_root, capsys):
    checkpoint = FakeCheckpoint()
    run = runs.Run("vnet", "smoke", "b", SETTINGS, checkpoint, is_main=False)
    _train(run, 1)
    assert capsys.readouterr().out == ""
    assert checkpoint.saved == [(None, 1, True)]  # the adapter decides (a TF worker must take part)
    assert not (run.folder / "history.json").exists() and not (run.folder / "settings.json").exists()
    with pytest.raises(ValueError, match="missing"):  # checked on every process, written by none
        run.finish()
    run.finish(device="cpu", data_source="synthetic", test_dice=0.5, per_case=[])
    assert not (run.folder / "metrics.json").exists()


def test_finish_writes_metrics_with_the_best_epochs_numbers(runs_root):
    run = runs.Run("cfcm", "cpu", "c", SETTINGS, FakeCheckpoint())
    _train(run, 4, dice=(0.2, 0.9, 0.5, 0.1))
    assert run.load_best() == 2
    record = run.finish(device="cpu", data_source="synthetic", test_dice=0.8, per_case=[{"id": "x"}])
    written = json.loads((run.folder / "metrics.json").read_text())
    assert set(runs.REQUIRED_KEYS) <= set(written)
    assert (written["best_epoch"], written["validation_dice"], written["epochs"]) == (2, 0.9, 4)
    assert written["train_dice"] is None  # no train Dice was recorded
    assert record["settings"]["image_size"] == [8, 8] and written["profile"] == "cpu"


def test_nan_values_survive_a_resume(runs_root):
    run = runs.Run("vnet", "smoke", "d", SETTINGS, FakeCheckpoint())
    for _ in run.epochs(1):
        run.end_epoch(validation_dice=float("nan"), train_loss=0.5)
    assert run.best_epoch is None
    again = runs.Run("vnet", "smoke", "d", SETTINGS, FakeCheckpoint())
    assert math.isnan(again.history["validation_dice"][0])


def test_write_metrics_names_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="missing device, data_source"):
        runs.write_metrics(tmp_path, {"lab": "vnet", "profile": "cpu"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_raises_a_clear_training_diverged(value):
    assert runs.check_loss(0.25, step=0) == 0.25
    with pytest.raises(runs.TrainingDiverged) as caught:
        runs.check_loss(value, step=2)
    message = str(caught.value)
    assert f"became {value}" in message and "step 3" in message
    for advice in ("learning rate", "bad input", "mixed precision", "last checkpoint", "resume"):
        assert advice in message, f"the message lacks {advice!r}: {message}"
