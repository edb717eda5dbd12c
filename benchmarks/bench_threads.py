"""Thread policy: the epoch a student waits for, with every core or all but one, batches made in turn or ahead.

For each lab and each configuration (framework threads = all cores or all but one; batches
assembled in turn, ``prefetch=0``, or ahead in a background thread, ``prefetch=2``) a fresh
process runs the notebook's own epoch: the exported ``train_one_epoch`` and ``evaluate``, the
notebook's augmentation, a ``labkit.runs.Run`` writing its checkpoints to a temporary folder and
the board's headless line, cpu profile, synthetic set. The process's first epoch (caches, tracing)
is left out. Configurations alternate, ``repeats`` times, so a load spike hits them alike. Lab 1
also runs with ``OMP_WAIT_POLICY=PASSIVE`` (PyTorch's OpenMP threads sleep instead of spinning
while they wait for each other: what decides how badly they suffer when another program takes a
core).

Thread counts are fixed when a framework starts, hence a process per configuration. With 4 or
more cores the same runs are repeated on 4 of them (``os.sched_setaffinity``, as ``taskset``);
on a machine with fewer the result says that could not be measured.

    .venv/bin/python benchmarks/bench_threads.py --result /tmp/t.json --config '{"repeats": 2}'
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPOSITORY, log, section_main

LABS = ("vnet", "cfcm")


def run(config: dict) -> dict:
    quick = bool(config.get("quick"))
    repeats = int(config.get("repeats", 1 if quick else 2))
    epochs = int(config.get("epochs", 2 if quick else 4))
    available = len(os.sched_getaffinity(0))
    core_counts = [count for count in (2, 4) if count <= available] or [available]
    result = {"cores_available": available, "epochs_per_process": epochs, "repeats": repeats,
              "not_measured": [f"{count} cores (this machine has {available})" for count in (2, 4)
                               if count > available],
              "labs": {}}
    for lab in LABS:
        configurations = [{"lab": lab, "cores": cores, "threads": threads, "prefetch": prefetch,
                           "epochs": epochs, "quick": quick}
                          for cores in core_counts for threads in sorted({cores, max(1, cores - 1)}, reverse=True)
                          for prefetch in (0, 2)]
        if lab == "vnet":  # OpenMP threads that sleep instead of spinning while they wait
            configurations += [dict(one, passive=True) for one in configurations
                               if one["threads"] == one["cores"] and one["prefetch"] == 0]
        times = {_name(one): [] for one in configurations}
        for repeat in range(repeats):
            for one in configurations:
                log(f"threads: {lab} {_name(one)} (repeat {repeat + 1}/{repeats})")
                times[_name(one)].extend(_worker(one))
        rows = {name: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                       "epochs_s": [round(value, 3) for value in values]} for name, values in times.items()}
        result["labs"][lab] = {"rows": rows, "fastest": {
            f"{cores} cores": min((name for name in rows if name.startswith(f"{cores} cores")),
                                  key=lambda name: rows[name]["median_s"]) for cores in core_counts}}
    return result


def _name(one: dict) -> str:
    return (f"{one['cores']} cores, {one['threads']} thread{'s' * (one['threads'] > 1)}, "
            f"{'batches ahead (prefetch=2)' if one['prefetch'] else 'batches in turn'}"
            f"{', OMP_WAIT_POLICY=PASSIVE' if one.get('passive') else ''}")


def _worker(one: dict) -> list[float]:
    """Run one configuration in a fresh process; its epoch times (the first left out)."""
    with tempfile.TemporaryDirectory(prefix="labkit-bench-threads-") as folder:
        environment = dict(os.environ, LABKIT_RUNS=folder, LABKIT_HEADLESS="1", TF_CPP_MIN_LOG_LEVEL="3")
        if one.get("passive"):
            environment["OMP_WAIT_POLICY"] = "PASSIVE"
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(one)], cwd=REPOSITORY,
                              env=environment, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"threads worker {one} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["epochs_s"][1:]


def _epochs(lab: str, profile, threads: int, prefetch: int, epochs: int) -> list[float]:
    """The notebook's epoch (as its training cell runs it), timed ``epochs`` times."""
    from labkit import runs
    from labkit.data.batching import BatchIterator
    from labkit.viz import TrainingBoard

    if lab == "vnet":
        import torch

        from labkit import torch_utils
        from labkit.data import prostate
        from labkit.labs import vnet as code

        torch_utils.cpu_threads(threads)
        settings = profile.vnet
        splits = profile.limit(prostate.load_splits(), "vnet")
        chain = prostate.preprocessing(spacing=settings.spacing, size=settings.image_size)
        train = BatchIterator(splits["train"], settings.batch_size, before=chain, each_batch=code.augmentation,
                              seed=profile.seed, prefetch=prefetch, progress=False)
        validation = BatchIterator(splits["validation"], settings.batch_size, before=chain, shuffle=False,
                                   progress=False)
        torch_utils.seed_everything(profile.seed)
        net = code.VNet(2, 1, settings.base_filters, settings.normalization)
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
        checkpoint = torch_utils.Checkpoint(net, optimizer=optimizer)

        def one_epoch():
            result = code.train_one_epoch(net, train, optimizer, code.dice_loss, "cpu",
                                          accumulate=settings.accumulate)
            return result, code.evaluate(net, validation, code.dice_loss, "cpu")
    else:
        import keras
        import tensorflow as tf

        from labkit import tf_utils
        from labkit.data import lung
        from labkit.data.transforms import Shuffle
        from labkit.labs import cfcm as code

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        settings = profile.cfcm
        setup = tf_utils.configure(seed=profile.seed, mixed_precision=settings.mixed_precision, xla=settings.xla)
        splits = profile.limit(lung.load_splits(), "cfcm")
        chain = lung.preprocessing(settings.image_size)
        train = BatchIterator(splits["train"], settings.batch_size, before=chain, each_epoch=[Shuffle()],
                              each_batch=code.augmentation, shuffle=False, seed=profile.seed,
                              prefetch=prefetch, progress=False)
        validation = BatchIterator(splits["validation"], settings.batch_size, before=chain, shuffle=False,
                                   progress=False)
        net = code.CFCM34(settings.base_filters)
        optimizer = keras.optimizers.Adam(settings.lr)
        net(tf.zeros((1, *settings.image_size, 1)))
        optimizer.build(net.trainable_variables)
        train_step, validation_step = code.make_steps(net, optimizer, xla=setup.xla)
        checkpoint = tf_utils.Checkpoint(net, optimizer)

        def one_epoch():
            return code.train_one_epoch(train_step, train), code.evaluate(validation_step, validation)

    run = runs.Run(lab, profile.name, "threads", {"threads": threads, "prefetch": prefetch}, checkpoint)
    board = TrainingBoard(max_epochs=epochs)
    times = []
    for epoch in run.epochs(epochs):
        started = time.perf_counter()
        train.set_epoch(epoch)
        trained, validated = one_epoch()
        values = {"train_loss": trained["loss"], "validation_loss": validated["loss"],
                  "train_dice": trained["dice"], "validation_dice": validated["dice"]}
        board.update(epoch + 1, **values)
        run.end_epoch(**values)
        times.append(time.perf_counter() - started)
    return times


def worker_main(one: dict) -> None:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:one["cores"]])  # as taskset, before any framework starts
    from labkit.profiles import get_profile

    profile = get_profile("smoke" if one.get("quick") else "cpu")
    times = _epochs(one["lab"], profile, one["threads"], one["prefetch"], one["epochs"] + 1)
    print(json.dumps({"epochs_s": times}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        raise SystemExit(section_main(run, __doc__.splitlines()[0]))
