"""Learning: validation Dice against wall-clock time, cpu profile, synthetic sets, one lab per run.

The lab's own exported code (``labkit/labs/<lab>.py``) trains with the cpu profile's settings
and the notebook's augmentation, for at most ``max_epochs`` epochs or ``budget_s`` seconds of
training, validating after every epoch. The clock starts after the cases are prepared (that
time is reported beside). Lab 1 (PyTorch) and Lab 2 (TensorFlow) each run in their own process:
``{"lab": "vnet"}`` or ``{"lab": "cfcm"}``.

The cpu-profile targets are read off the curve: the best validation Dice reached within
``TARGET_TIME_S`` of training (Lab 1 >= 0.85, Lab 2 >= 0.90).

    .venv/bin/python benchmarks/bench_learning.py --result /tmp/l.json --config '{"lab": "vnet"}'
"""

from __future__ import annotations

import time

from common import log, section_main

TARGETS = {"vnet": 0.85, "cfcm": 0.90}
TARGET_TIME_S = 600.0


def run(config: dict) -> dict:
    lab = config.get("lab", "vnet")
    if lab not in TARGETS:
        raise ValueError(f"lab must be 'vnet' or 'cfcm', got {lab!r}")
    quick = bool(config.get("quick"))
    budget = float(config.get("budget_s", 20 if quick else TARGET_TIME_S))
    from labkit.profiles import get_profile

    profile = get_profile("smoke" if quick else "cpu")
    log(f"learning: {lab}, {profile.name} profile, budget {budget:.0f} s")
    curve, details = (_learn_vnet if lab == "vnet" else _learn_cfcm)(profile, config, budget)
    return dict(details, lab=lab, profile=profile.name, budget_s=budget, curve=curve,
                targets=[_target(lab, curve, budget, quick)])


def _target(lab: str, curve: list[dict], budget: float, quick: bool) -> dict:
    within = [point["validation_dice"] for point in curve if point["time_s"] <= TARGET_TIME_S]
    best = max(within) if within else None
    finished = bool(curve) and curve[-1].get("finished", False)
    judged = not quick and (budget >= TARGET_TIME_S or finished)
    return {"name": f"{'Lab 1 V-Net' if lab == 'vnet' else 'Lab 2 CFCM'}: best validation Dice "
                    f"within {TARGET_TIME_S / 60:.0f} min (cpu profile)",
            "target": f">= {TARGETS[lab]}", "measured": None if best is None else round(best, 4),
            "unit": "Dice", "met": (best is not None and best >= TARGETS[lab]) if judged else None}


def _point(epoch: int, started: float, train_dice: float, validation_dice: float) -> dict:
    """One point of the curve; ``cpu_s`` (this process's CPU time, all threads) shows how much
    of the wall-clock time other users of a shared machine took."""
    return {"epoch": epoch + 1, "time_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(time.process_time() - _CPU_AT_START[0], 2),
            "train_dice": round(float(train_dice), 4), "validation_dice": round(float(validation_dice), 4)}


_CPU_AT_START = [0.0]


def _timed_curve(lab: str, max_epochs: int, budget: float, one_epoch) -> list[dict]:
    """Run ``one_epoch(epoch) -> (train Dice, validation Dice)`` until ``max_epochs`` or the
    time budget; one point per epoch, the last marked ``finished`` when all epochs ran."""
    curve, started = [], _start_clock()
    for epoch in range(max_epochs):
        train_dice, validation_dice = one_epoch(epoch)
        curve.append(_point(epoch, started, train_dice, validation_dice))
        log(f"learning: {lab} epoch {epoch + 1}: {curve[-1]}")
        if curve[-1]["time_s"] >= budget:
            break
    else:
        curve[-1]["finished"] = True
    return curve


def _start_clock() -> float:
    _CPU_AT_START[0] = time.process_time()
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Lab 1: V-Net (PyTorch)
# ----------------------------------------------------------------------------------------------


def _learn_vnet(profile, config, budget: float):
    import torch
    from lab_code import load_lab, vnet_augmentation

    from labkit import torch_utils
    from labkit.data import BatchIterator, prostate

    lab, source = load_lab("vnet")
    settings = profile.vnet
    splits = prostate.load_splits(config.get("data_root"))
    train_cases = splits["train"][: settings.max_cases] if settings.max_cases else splits["train"]
    chain = prostate.preprocessing(spacing=settings.spacing, size=settings.image_size)
    augmentation = vnet_augmentation()
    prepare_start = time.perf_counter()
    train_batches = BatchIterator(train_cases, settings.batch_size, before=chain,
                                  each_batch=augmentation, seed=profile.seed, progress=False,
                                  prefetch=2)  # as the notebook
    validation_batches = BatchIterator(splits["validation"], settings.batch_size, before=chain,
                                       shuffle=False, progress=False)
    prepare_s = time.perf_counter() - prepare_start
    torch_utils.seed_everything(profile.seed)
    net = lab.VNet(in_channels=2, out_channels=1, n_filters=settings.n_filters,
                   normalization=settings.normalization)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    def one_epoch(epoch):
        train_batches.set_epoch(epoch)
        train = lab.train_one_epoch(net, train_batches, optimizer, lab.dice_loss, "cpu",
                                    accumulate=settings.accumulate)
        return train["dice"], lab.evaluate(net, validation_batches, lab.dice_loss, "cpu")["dice"]

    curve = _timed_curve("vnet", settings.max_epochs, budget, one_epoch)
    return curve, {"lab_source": source, "prepare_s": round(prepare_s, 1),
                   "train_cases": len(train_cases), "validation_cases": len(splits["validation"]),
                   "settings": profile.to_dict()["vnet"], "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------
# Lab 2: CFCM (TensorFlow)
# ----------------------------------------------------------------------------------------------


def _learn_cfcm(profile, config, budget: float):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf
    from lab_code import load_lab

    from labkit import tf_utils
    from labkit.data import BatchIterator, lung
    from labkit.data.transforms import RandomAffine, RandomIntensity, Shuffle

    settings = profile.cfcm
    setup = tf_utils.configure(seed=profile.seed, mixed_precision=settings.mixed_precision,
                               xla=settings.xla)
    lab, source = load_lab("cfcm")
    splits = lung.load_splits(config.get("data_root"))
    train_cases = splits["train"][: settings.max_cases] if settings.max_cases else splits["train"]
    chain = lung.preprocessing(settings.image_size)
    augmentation = [RandomAffine(["image", "label"], orders=(1, 0), degrees=5.0, scale=(0.95, 1.05),
                                 spatial_dims=2),
                    RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.05, 0.05))]
    prepare_start = time.perf_counter()
    train_batches = BatchIterator(train_cases, settings.batch_size, before=chain,
                                  each_epoch=[Shuffle()], each_batch=augmentation, shuffle=False,
                                  seed=profile.seed, progress=False)
    validation_batches = BatchIterator(splits["validation"], settings.batch_size, before=chain,
                                       shuffle=False, progress=False)
    prepare_s = time.perf_counter() - prepare_start
    keras.utils.set_random_seed(profile.seed)
    net = lab.CFCM34(settings.base_filters)
    train_step, validation_step = lab.make_steps(net, keras.optimizers.Adam(settings.lr), xla=setup.xla)

    def tensors(batch):
        return tf.constant(batch["image"][..., None]), tf.constant(batch["label"][..., None])

    def mean_dice(batches, step, training):
        total, count = 0.0, 0
        for batch in batches:
            score = step(*tensors(batch))[1]
            total += len(batch["id"]) * float(score)
            count += len(batch["id"])
        return total / max(count, 1)

    def one_epoch(epoch):
        train_batches.set_epoch(epoch)
        return (mean_dice(train_batches, train_step, True),
                mean_dice(validation_batches, validation_step, False))

    curve = _timed_curve("cfcm", settings.max_epochs, budget, one_epoch)
    return curve, {"lab_source": source, "prepare_s": round(prepare_s, 1),
                   "train_cases": len(train_cases), "validation_cases": len(splits["validation"]),
                   "settings": profile.to_dict()["cfcm"], "tensorflow": str(setup),
                   "numpy": np.__version__}


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
