"""Training reliability (issue 8): atomic checkpoints, NaN losses, ``kill -9`` and resume, rerunning notebooks.

- Checkpoints hold the model, the optimiser, the epoch, the seed and the metrics, are written
  atomically, and torch ones load with ``weights_only=True``.
- A NaN / Inf loss raises ``TrainingDiverged`` (what happened, likely causes, what to do) before
  the epoch's checkpoint is written: the one on disk stays byte for byte the last good epoch's.
- ``python -m labkit.train vnet|cfcm`` killed with SIGKILL in the middle of an epoch, then
  started again, ends with exactly the weights of an uninterrupted run with the same seed.
- Each notebook runs twice in a row in the smoke profile ("Restart kernel and run all"); the
  second run resumes from the checkpoint and reports the same test Dice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300

VNET_TINY = ["--profile", "smoke", "--image-size", "32,32,32", "--filters", "8", "--max-cases", "6",
             "--workers", "1"]
CFCM_TINY = ["--profile", "smoke", "--strategy", "default", "--image-size", "64,64", "--filters", "4",
             "--blocks", "1,1,1,1", "--batch-size", "2", "--max-cases", "8", "--workers", "1"]

# Larger images for the kill test: an epoch must last long enough to be killed in its middle,
# also on an idle machine (at 64x64 it takes under 0.1 s there).
CFCM_KILL = [*CFCM_TINY[:CFCM_TINY.index("--image-size") + 1], "128,128",
             *CFCM_TINY[CFCM_TINY.index("--image-size") + 2:]]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _environment(data_root: Path, work: Path) -> dict:
    environment = dict(os.environ)
    environment.update(LABKIT_DATA=str(data_root), LABKIT_RUNS=str(work / "runs"),
                       LABKIT_CACHE=str(work / "cache"), LABKIT_HEADLESS="1", OMP_NUM_THREADS="1",
                       TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPOSITORY), PYTHONUNBUFFERED="1")
    for name in ("LABKIT_PROFILE", "TF_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        environment.pop(name, None)
    return environment


def _train(lab: str, arguments: list[str], data_root: Path, work: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "labkit.train", lab, *arguments]
    result = subprocess.run(command, cwd=work, env=_environment(data_root, work), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _train_and_kill(lab: str, arguments: list[str], data_root: Path, work: Path, saved) -> None:
    """Start the trainer, SIGKILL it as soon as ``saved()`` is true (epoch 1 written, epoch 2 running)."""
    command = [sys.executable, "-m", "labkit.train", lab, *arguments]
    process = subprocess.Popen(command, cwd=work, env=_environment(data_root, work), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not saved():
            assert process.poll() is None, f"the trainer ended before the first checkpoint: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
        time.sleep(0.03)  # inside epoch 2: the kill tests' epochs take a few tenths of a second or more
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the trainer and any data-preparation children
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the trainer finished before it could be killed"


# ----------------------------------------------------------------------------------------------
# Fast checks: the divergence message, torch checkpoints
# ----------------------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_raises_a_clear_training_diverged(value):
    torch_utils = pytest.importorskip("labkit.torch_utils")
    assert torch_utils.check_loss(0.25, step=0) == 0.25
    with pytest.raises(torch_utils.TrainingDiverged) as caught:
        torch_utils.check_loss(value, step=2)
    message = str(caught.value)
    assert f"became {value}" in message and "step 3" in message
    for advice in ("learning rate", "bad input", "mixed precision", "last checkpoint", "resume"):
        assert advice in message, f"the message lacks {advice!r}: {message}"


@pytest.mark.tf
def test_the_tensorflow_loss_check_reads_tensors():
    tf_utils = pytest.importorskip("labkit.tf_utils")
    import tensorflow as tf

    assert tf_utils.check_loss(tf.constant(0.5)) == 0.5
    with pytest.raises(tf_utils.TrainingDiverged, match="learning rate"):
        tf_utils.check_loss(tf.constant(float("nan")), step=0)


@pytest.mark.tf
def test_tensorflow_checkpoints_keep_the_seed_and_older_ones_without_it_still_resume(tmp_path):
    tf_utils = pytest.importorskip("labkit.tf_utils")
    import tensorflow as tf

    weight, epoch, seed = tf.Variable(3.0), tf.Variable(2, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    tf_utils.save_checkpoint(tmp_path / "old", number=2, weight=weight, epoch=epoch)  # before seeds were saved
    weight.assign(0.0)
    assert tf_utils.restore_checkpoint(tmp_path / "old", weight=weight, epoch=epoch, seed=seed).name == "ckpt-2"
    assert (float(weight.numpy()), int(seed.numpy())) == (3.0, 0)

    seed.assign(42)
    tf_utils.save_checkpoint(tmp_path / "new", number=3, weight=weight, epoch=epoch, seed=seed)
    seed.assign(0)
    tf_utils.restore_checkpoint(tmp_path / "new", weight=weight, epoch=epoch, seed=seed)
    assert int(seed.numpy()) == 42
    with pytest.raises(tf_utils.CheckpointMismatch, match="choose another RUN_NAME"):
        tf_utils.restore_checkpoint(tmp_path / "new", other=tf.Variable(1.0), epoch=epoch, seed=seed)


@pytest.mark.torch
def test_torch_checkpoints_are_atomic_and_load_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    from labkit import torch_utils

    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    path = torch_utils.save_checkpoint(tmp_path / "last.pt", epoch=4, seed=7, net=net.state_dict(),
                                       optimizer=optimizer.state_dict(), history={"validation_dice": [0.5]})
    assert [item.name for item in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    state = torch.load(path, weights_only=True)
    assert (state["epoch"], state["seed"], state["history"]) == (4, 7, {"validation_dice": [0.5]})
    assert torch.equal(state["net"]["weight"], net.weight.detach())
    assert state["optimizer"]["state"][0]["step"] == 1


# ----------------------------------------------------------------------------------------------
# NaN loss: stop, keep the last good checkpoint
# ----------------------------------------------------------------------------------------------
class PoisonedBatches:
    """A ``BatchIterator`` whose batches carry NaN images and labels from ``epoch`` on."""

    def __init__(self, batches, epoch: int):
        self.batches, self.poisoned_from, self.epoch = batches, epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            if self.epoch >= self.poisoned_from:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan),
                             label=np.full_like(batch["label"], np.nan))
            yield batch


def _use_folders(monkeypatch, data_root: Path, work: Path) -> None:
    """The trainers write LABKIT_* into os.environ: set them here first so monkeypatch undoes it."""
    for name, value in (("LABKIT_DATA", data_root), ("LABKIT_RUNS", work / "runs"),
                        ("LABKIT_CACHE", work / "cache"), ("LABKIT_HEADLESS", "1")):
        monkeypatch.setenv(name, str(value))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def _files(folder: Path) -> dict:
    """Every file of a run folder and its bytes, but ``settings.json`` (rewritten when a run starts)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "settings.json"}


@pytest.mark.slow
@pytest.mark.torch
def test_a_nan_loss_stops_vnet_training_and_keeps_the_last_checkpoint(tiny_prostate_root, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from labkit import torch_utils
    from labkit.train import common, vnet

    _use_folders(monkeypatch, tiny_prostate_root, tmp_path)

    def trainer(max_epochs: int):
        arguments = ["--profile", "smoke", "--image-size", "16,16,16", "--filters", "4", "--max-cases", "4",
                     "--workers", "1", "--run-name", "nan", "--max-epochs", str(max_epochs)]
        args = vnet.build_parser().parse_args(arguments)
        profile, settings = common.settings_from_arguments(args, "vnet")
        return vnet.Trainer(args, profile, settings, common.Rank(), torch_utils.pick_device("cpu"))

    trainer(1).fit()  # epoch 0, good
    folder = tmp_path / "runs" / "vnet-smoke-nan"
    before = _files(folder)
    assert "last.pt" in before or "checkpoints/checkpoint" in before
    resumed = trainer(2)
    resumed.batches["train"] = PoisonedBatches(resumed.batches["train"], epoch=1)
    with pytest.raises(torch_utils.TrainingDiverged, match="learning rate too high"):
        resumed.fit()
    assert _files(folder) == before, "the run folder changed after the loss became NaN"
    assert torch_utils.load_checkpoint(folder / "last.pt")["epoch"] == 0


@pytest.mark.slow
@pytest.mark.tf
def test_a_nan_loss_stops_cfcm_training_and_keeps_the_last_checkpoint(tiny_lung_root, tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from labkit import tf_utils
    from labkit.train import cfcm, common

    _use_folders(monkeypatch, tiny_lung_root, tmp_path)

    def trainer(max_epochs: int):
        arguments = ["--profile", "smoke", "--strategy", "default", "--image-size", "32,32", "--filters", "2",
                     "--blocks", "1,1,1,1", "--batch-size", "2", "--max-cases", "4", "--workers", "1",
                     "--run-name", "nan", "--max-epochs", str(max_epochs)]
        args = cfcm.build_parser().parse_args(arguments)
        profile, settings = common.settings_from_arguments(args, "cfcm")
        setup = tf_utils.configure(seed=profile.seed)
        strategy, workers = cfcm.make_strategy("default")
        return cfcm.Trainer(args, profile, settings, setup, strategy, workers)

    trainer(1).fit()
    folder = tmp_path / "runs" / "cfcm-smoke-nan"
    before = _files(folder)
    assert "last.pt" in before or "checkpoints/checkpoint" in before
    resumed = trainer(2)
    resumed.batches["train"] = PoisonedBatches(resumed.batches["train"], epoch=1)
    with pytest.raises(tf_utils.TrainingDiverged, match="learning rate too high"):
        resumed.fit()
    assert _files(folder) == before, "the run folder changed after the loss became NaN"
    assert tf_utils.latest_checkpoint(folder).name == "ckpt-1"


# ----------------------------------------------------------------------------------------------
# kill -9 in the middle of an epoch, then resume: the same weights as an uninterrupted run
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.torch
def test_vnet_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tiny_prostate_root, tmp_path):
    torch = pytest.importorskip("torch")
    runs = tmp_path / "runs"
    _train("vnet", [*VNET_TINY, "--max-epochs", "3", "--run-name", "whole"], tiny_prostate_root, tmp_path)
    interrupted = [*VNET_TINY, "--max-epochs", "3", "--run-name", "killed"]
    last = runs / "vnet-smoke-killed" / "last.pt"
    _train_and_kill("vnet", interrupted, tiny_prostate_root, tmp_path, saved=last.is_file)
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 0, "the kill came after epoch 2 had finished"
    assert isinstance(state["seed"], int)
    assert {"net", "optimizer", "epoch", "seed", "history"} <= set(state)
    result = _train("vnet", interrupted, tiny_prostate_root, tmp_path)
    assert "resuming vnet-smoke-killed after epoch 0" in result.stdout

    whole = torch.load(runs / "vnet-smoke-whole" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert whole["epoch"] == resumed["epoch"] == 2
    assert whole["net"].keys() == resumed["net"].keys()
    for name, weight in whole["net"].items():
        assert torch.equal(weight, resumed["net"][name]), f"{name} differs after the resume"


def _checkpoint_tensors(folder: Path) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder / "checkpoints"))
    names = [name for name in reader.get_variable_to_shape_map()
             if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))]
    return {name: reader.get_tensor(name) for name in names}


@pytest.mark.slow
@pytest.mark.tf
def test_cfcm_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tiny_lung_root, tmp_path):
    pytest.importorskip("tensorflow")
    runs = tmp_path / "runs"
    _train("cfcm", [*CFCM_KILL, "--max-epochs", "3", "--run-name", "whole"], tiny_lung_root, tmp_path)
    interrupted = [*CFCM_KILL, "--max-epochs", "3", "--run-name", "killed"]
    index = runs / "cfcm-smoke-killed" / "checkpoints" / "checkpoint"
    _train_and_kill("cfcm", interrupted, tiny_lung_root, tmp_path, saved=index.is_file)
    assert "ckpt-1" in index.read_text() and "ckpt-2" not in index.read_text(), "killed after epoch 2 finished"
    result = _train("cfcm", interrupted, tiny_lung_root, tmp_path)
    assert "resuming from ckpt-1" in result.stdout

    whole, resumed = _checkpoint_tensors(runs / "cfcm-smoke-whole"), _checkpoint_tensors(runs / "cfcm-smoke-killed")
    assert whole.keys() == resumed.keys()
    for part in ("net_variables/", "optimizer_variables/", "epoch/", "seed/"):  # what a checkpoint holds
        assert any(name.startswith(part) for name in whole), f"no {part} in the checkpoint"
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=f"{name} differs after the resume")


# ----------------------------------------------------------------------------------------------
# "Restart kernel and run all", twice
# ----------------------------------------------------------------------------------------------
NOTEBOOKS = {"vnet": ("01_vnet_prostate.ipynb", "resuming vnet-smoke-baseline"),
             "cfcm": ("02_cfcm_lung.ipynb", "resuming from ckpt-")}


def _execute(notebook: Path, environment: dict) -> str:
    """Run every cell in a fresh kernel (in the notebook's folder); all the stream output."""
    import nbformat
    from nbclient import NotebookClient

    saved = dict(os.environ)
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        document = nbformat.read(notebook, as_version=4)
        NotebookClient(document, kernel_name="python3", timeout=600,
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return "".join(output.get("text", "") for cell in document.cells for output in cell.get("outputs", [])
                   if output.get("output_type") == "stream")


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory):
    """Each notebook executed twice in a row with one runs folder: {lab: [(output, metrics), ...]}."""
    runs = tmp_path_factory.mktemp("notebook_runs")
    environment = {"LABKIT_PROFILE": "smoke", "LABKIT_HEADLESS": "1", "LABKIT_RUNS": str(runs),
                   "LABKIT_DATA": str(REPOSITORY / "data")}
    results = {}
    for lab, (name, _) in NOTEBOOKS.items():
        results[lab] = []
        for _ in range(2):
            output = _execute(REPOSITORY / "notebooks" / name, environment)
            metrics = json.loads((runs / f"{lab}-smoke-baseline" / "metrics.json").read_text())
            results[lab].append((output, metrics))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("lab", sorted(NOTEBOOKS))
def test_a_notebook_runs_twice_and_the_second_run_resumes(notebook_runs, lab):
    (first_output, first), (second_output, second) = notebook_runs[lab]
    resumed = NOTEBOOKS[lab][1]
    assert resumed not in first_output, "the first run found a checkpoint in a fresh runs folder"
    assert resumed in second_output, "the second run did not resume from the first run's checkpoint"
    assert first["test_dice"] is not None
    assert second["test_dice"] == first["test_dice"]
    assert second["epochs"] == first["epochs"]
