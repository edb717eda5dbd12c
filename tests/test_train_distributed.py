"""``labkit.train``: the labs' code on several processes (DDP, Gloo) and replicas (MirroredStrategy).

The slow tests start the real command lines in fresh processes on the tiny phantom sets:
``torchrun --standalone --nproc_per_node=2 -m labkit.train vnet`` (two CPU processes on Gloo)
and ``python -m labkit.train cfcm --strategy mirrored --cpu-devices 2`` (two logical CPU
devices), at smoke sizes, and read back what the run left in its folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit.profiles import get_profile
from labkit.runs import REQUIRED_KEYS
from labkit.train import common

REPOSITORY = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # a hung process group fails the test instead of blocking the suite


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _environment(data_root: Path, work: Path) -> dict:
    environment = dict(os.environ)
    environment.update(LABKIT_DATA=str(data_root), LABKIT_RUNS=str(work / "runs"),
                       LABKIT_CACHE=str(work / "cache"), LABKIT_HEADLESS="1", OMP_NUM_THREADS="1",
                       TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPOSITORY))
    environment.pop("LABKIT_PROFILE", None)
    environment.pop("TF_CONFIG", None)
    return environment


def _run(command: list[str], data_root: Path, work: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=work, env=_environment(data_root, work), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _torchrun(arguments: list[str], data_root: Path, work: Path, processes: int = 2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "labkit.train", "vnet", *arguments]
    return _run(command, data_root, work)


def _metrics(work: Path, folder: str) -> dict:
    return json.loads((work / "runs" / folder / "metrics.json").read_text())


VNET_TINY = ["--profile", "smoke", "--image-size", "16,16,16", "--filters", "4", "--lr", "0.01",
             "--no-augment"]
CFCM_TINY = ["--profile", "smoke", "--image-size", "32,32", "--filters", "2", "--blocks", "1,1,1,1",
             "--batch-size", "2", "--lr", "0.01", "--no-augment"]


# ----------------------------------------------------------------------------------------------
# Fast checks: options, settings, environment, dispatcher
# ----------------------------------------------------------------------------------------------
def _parse(lab: str, *arguments: str):
    import argparse

    return common.add_common_arguments(argparse.ArgumentParser()).parse_args(list(arguments))


def test_overrides_change_only_the_named_settings():
    args = _parse("vnet", "--profile", "smoke", "--image-size", "16x16x16", "--filters", "2",
                  "--max-epochs", "3", "--seed", "7")
    profile = common.settings_from_arguments(args, "vnet")
    settings = profile.vnet
    assert (settings.image_size, settings.base_filters, settings.max_epochs) == ((16, 16, 16), 2, 3)
    assert profile.seed == 7
    untouched = get_profile("smoke").vnet
    assert (settings.lr, settings.batch_size, settings.spacing) == (untouched.lr, untouched.batch_size, untouched.spacing)


def test_an_image_size_of_the_wrong_dimension_is_refused():
    args = _parse("cfcm", "--profile", "smoke", "--image-size", "64,64,32")
    with pytest.raises(common.TrainError, match="cfcm needs 2"):
        common.settings_from_arguments(args, "cfcm")


@pytest.mark.parametrize("text", ["64,x", "0,4", ""])
def test_bad_sizes_are_refused_by_the_parser(text, capsys):
    with pytest.raises(SystemExit):
        _parse("vnet", "--image-size", text)
    assert "size" in capsys.readouterr().err


def test_lr_scaling():
    assert common.scaled_lr(1e-3, 4, "none") == pytest.approx(1e-3)
    assert common.scaled_lr(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert common.scaled_lr(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(common.TrainError, match="one of"):
        common.scaled_lr(1e-3, 4, "cubic")


def test_rank_from_torchrun_variables():
    rank = common.rank_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (rank.rank, rank.world_size, rank.local_rank, rank.is_main) == (3, 4, 1, False)
    assert common.rank_from_environment({}).is_main
    with pytest.raises(common.TrainError, match="does not fit"):
        common.rank_from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(common.TrainError, match="whole numbers"):
        common.rank_from_environment({"RANK": "one"})


def test_a_missing_lab_module_says_to_run_make_export():
    with pytest.raises(common.TrainError, match="make export"):
        common.import_lab("no_such_lab")


def test_per_case_rows_and_means_for_metrics():
    scores = {"train": {"b": 1.0, "a": 0.5}, "validation": {"c": 0.25}, "test": {}}
    assert common.per_case_rows(scores)[:2] == [{"split": "train", "id": "a", "dice": 0.5},
                                                {"split": "train", "id": "b", "dice": 1.0}]
    assert common.mean_or_none(scores["train"]) == pytest.approx(0.75)
    assert common.mean_or_none(scores["test"]) is None


@pytest.mark.torch
def test_leave_now_flushes_what_was_printed_and_exits_with_the_status():
    """A torchrun process ends with os._exit (Gloo's threads may still hold tensors at shutdown)."""
    pytest.importorskip("torch")
    script = ("import sys\nfrom labkit.train.vnet import leave_now\n"
              "print('written', end='')\nprint('and said', end='', file=sys.stderr)\nleave_now(3)\n"
              "print('never')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY,
                            timeout=TIMEOUT_S)
    assert (result.returncode, result.stdout, result.stderr) == (3, "written", "and said")


def _imported_frameworks(lab: str) -> set:
    script = textwrap.dedent(f"""
        import sys
        from labkit.train.__main__ import main
        try:
            main([{lab!r}, "--help"])
        except SystemExit:
            pass
        print(sorted({{"torch", "tensorflow"}} & set(sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"')))


@pytest.mark.slow
def test_the_dispatcher_imports_only_the_framework_asked_for():
    assert _imported_frameworks("vnet") == {"torch"}
    assert _imported_frameworks("cfcm") == {"tensorflow"}


def test_the_dispatcher_rejects_an_unknown_lab(capsys):
    from labkit.train.__main__ import main

    assert main(["unet"]) == 2
    assert "choose vnet or cfcm" in capsys.readouterr().err


# What labkit.train takes from the notebooks' exported modules (a rename there must show up here)
VNET_NAMES = {"VNet": ("in_channels", "out_channels", "base_filters", "normalization"),
              "dice_loss": ("prob", "label"), "to_tensors": ("batch", "device", "channels_last"),
              "train_one_epoch": ("net", "batches", "optimizer", "loss_fn", "device", "accumulate", "scaler",
                                  "mixed_precision", "channels_last"),
              "evaluate": ("net", "batches", "loss_fn", "device", "mixed_precision", "channels_last")}
CFCM_NAMES = {"CFCM34": ("base_filters", "layers"), "LadderNet": ("base_filters", "layers", "fusion"),
              "make_steps": ("net", "optimizer", "xla"), "evaluate": ("validation_step", "batches"),
              "dice_score": ("prob", "label")}


def _check_names(module, names: dict) -> None:
    import inspect

    for name, parameters in names.items():
        assert hasattr(module, name), f"{module.__name__} no longer defines {name}: update labkit.train"
        accepted = inspect.signature(getattr(module, name)).parameters
        missing = [parameter for parameter in parameters if parameter not in accepted]
        assert not missing, f"{module.__name__}.{name} lost the parameters {missing}: update labkit.train"


@pytest.mark.torch
def test_the_vnet_lab_module_defines_what_the_trainer_uses():
    pytest.importorskip("torch")
    from labkit.labs import vnet

    _check_names(vnet, VNET_NAMES)
    assert isinstance(vnet.augmentation, list) and vnet.augmentation


@pytest.mark.tf
def test_the_cfcm_lab_module_defines_what_the_trainer_uses():
    pytest.importorskip("tensorflow")
    from labkit.labs import cfcm

    _check_names(cfcm, CFCM_NAMES)
    assert isinstance(cfcm.augmentation, list) and cfcm.augmentation


# ----------------------------------------------------------------------------------------------
# Lab 1: torchrun, two processes, Gloo
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.torch
def test_torchrun_two_processes_train_in_step_and_resume(tiny_prostate_root, tmp_path):
    _torchrun([*VNET_TINY, "--max-epochs", "3", "--run-name", "two"], tiny_prostate_root, tmp_path)
    record = _metrics(tmp_path, "vnet-smoke-two")
    assert set(REQUIRED_KEYS) <= set(record)
    assert record["settings"]["processes"] == 2
    assert record["global_batch_size"] == 2 * record["settings"]["batch_size"]
    assert record["rank_weight_spread"] == 0.0  # DDP kept both processes' weights identical
    losses = record["history"]["train_loss"]
    assert losses[-1] < losses[0], f"the training loss did not fall: {losses}"
    assert {row["split"] for row in record["per_case"]} == {"train", "validation", "test"}
    assert (tmp_path / "runs" / "vnet-smoke-two" / "last.pt").is_file()

    result = _torchrun([*VNET_TINY, "--max-epochs", "4", "--run-name", "two"], tiny_prostate_root, tmp_path)
    assert "resuming vnet-smoke-two after epoch 3" in result.stdout
    assert result.stdout.count("[labkit.train] epoch ") == 1  # rank 0 logs, once, the one new epoch
    assert _metrics(tmp_path, "vnet-smoke-two")["history"]["epoch"] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.torch
def test_two_processes_step_like_one_process_with_the_global_batch(tiny_prostate_root, tmp_path):
    """DDP averages the gradients: 2 processes x 1 case = 1 process x 2 cases, weight for weight."""
    torch = pytest.importorskip("torch")
    # no normalisation layer: a bias just before GroupNorm has a zero gradient, and Adam turns
    # rounding noise there into full-size steps that differ from run to run
    one_step = [*VNET_TINY, "--normalization", "none", "--max-epochs", "1", "--max-cases", "4"]  # 2 steps
    _torchrun([*one_step, "--batch-size", "1", "--run-name", "ddp"], tiny_prostate_root, tmp_path)
    _run([sys.executable, "-m", "labkit.train", "vnet", *one_step, "--batch-size", "2", "--run-name", "single"],
         tiny_prostate_root, tmp_path)
    runs = tmp_path / "runs"
    distributed = torch.load(runs / "vnet-smoke-ddp" / "last.pt", weights_only=True)["net"]
    single = torch.load(runs / "vnet-smoke-single" / "last.pt", weights_only=True)["net"]
    for name, weight in single.items():
        torch.testing.assert_close(distributed[name], weight, atol=1e-5, rtol=1e-4, msg=name)
    from labkit import torch_utils
    from labkit.labs.vnet import VNet

    torch_utils.seed_everything(common.get_profile("smoke").seed)  # the trainer's first weights
    initial = VNet(2, 1, 4, "none").state_dict()
    moved = max(float((single[name] - weight).abs().max()) for name, weight in initial.items())
    assert moved > 1e-3, "the steps did not change the weights"


# ----------------------------------------------------------------------------------------------
# Lab 2: MirroredStrategy over two logical CPU devices
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.tf
def test_mirrored_strategy_on_two_cpu_devices_trains_in_step_and_resumes(tiny_lung_root, tmp_path):
    command = [sys.executable, "-m", "labkit.train", "cfcm", "--strategy", "mirrored", "--cpu-devices", "2",
               *CFCM_TINY, "--run-name", "two"]
    _run([*command, "--max-epochs", "3"], tiny_lung_root, tmp_path)
    record = _metrics(tmp_path, "cfcm-smoke-two")
    assert set(REQUIRED_KEYS) <= set(record)
    assert (record["settings"]["replicas"], record["global_batch_size"]) == (2, 4)
    assert record["replica_weight_spread"] == 0.0  # weights and batch-norm statistics agree
    losses = record["history"]["train_loss"]
    assert losses[-1] < losses[0], f"the training loss did not fall: {losses}"

    result = _run([*command, "--max-epochs", "4"], tiny_lung_root, tmp_path)
    assert "resuming cfcm-smoke-two after epoch 3" in result.stdout
    assert _metrics(tmp_path, "cfcm-smoke-two")["history"]["epoch"] == [1, 2, 3, 4]


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("localhost", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


@pytest.mark.slow
@pytest.mark.tf
def test_multiworker_strategy_with_two_local_workers(tiny_lung_root, tmp_path):
    """Two processes on this machine play two machines (TF_CONFIG); only the chief writes."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    command = [sys.executable, "-m", "labkit.train", "cfcm", "--strategy", "multiworker", *CFCM_TINY,
               "--max-epochs", "1", "--max-cases", "4", "--run-name", "workers"]
    processes = []
    for index in range(2):
        environment = _environment(tiny_lung_root, tmp_path)
        environment["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in processes] == [0, 0], "\n----\n".join(outputs)[-6000:]
    record = _metrics(tmp_path, "cfcm-smoke-workers")
    assert (record["settings"]["replicas"], record["global_batch_size"]) == (2, 4)
    assert record["replica_weight_spread"] == 0.0
    assert "[labkit.train]" in outputs[0] and "[labkit.train]" not in outputs[1]


REPLICA_MEAN_SCRIPT = """
import numpy as np
from labkit.train import cfcm
cfcm.split_cpu(2)
import keras, tensorflow as tf
from labkit.labs import cfcm as lab

def weights_after_one_step(strategy, replicas):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
                                keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(net.trainable_variables)
    train_step, _ = lab.make_steps(net, cfcm.ReplicaMeanOptimizer(optimizer, replicas))
    rng = np.random.default_rng(1)
    batch = {"image": rng.random((4, 8, 8)).astype("float32"),
             "label": (rng.random((4, 8, 8)) > 0.5).astype("float32")}
    step = cfcm.make_distributed_step(strategy, train_step)
    step(*cfcm.distribute_batch(strategy, batch, 4 // replicas, 0))
    return [np.asarray(w) for w in net.get_weights()], cfcm.replica_weight_spread(strategy, net)

cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
mirrored, spread = weights_after_one_step(tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()), 2)
single, _ = weights_after_one_step(tf.distribute.OneDeviceStrategy(cpus[0]), 1)
print("largest difference", max(float(np.max(np.abs(a - b))) for a, b in zip(mirrored, single)))
print("replica spread", spread)
"""


@pytest.mark.slow
@pytest.mark.tf
def test_two_replicas_step_like_one_device_with_the_global_batch(tmp_path):
    """The gradients are averaged, not summed: 2 replicas x 2 images = 1 device x 4 images."""
    result = _run([sys.executable, "-c", REPLICA_MEAN_SCRIPT], tmp_path, tmp_path)
    lines = dict(line.rsplit(" ", 1) for line in result.stdout.strip().splitlines()[-2:])
    assert float(lines["largest difference"]) < 1e-5, result.stdout
    assert float(lines["replica spread"]) == 0.0
