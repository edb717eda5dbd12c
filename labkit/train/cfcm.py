"""Lab 2 (CFCM, TensorFlow) on several devices: ``python -m labkit.train cfcm --strategy S``.

``mirrored``: every GPU of this machine (without GPUs the CPU, split by ``--cpu-devices N`` into
N logical devices for tests); ``multiworker``: several machines, each with its ``TF_CONFIG``;
``default``: one device, as the notebook.

The networks, ``make_steps``, the augmentation and ``evaluate`` are the notebook's
(``labkit.labs.cfcm``). Each replica runs the notebook's step on its slice of the global batch.
Keras optimisers SUM the replicas' gradients while the notebook's loss is a per-replica mean,
so the step gets a :class:`ReplicaMeanOptimizer`. The run folder is a :class:`labkit.runs.Run`
written by the chief; put ``LABKIT_RUNS`` on a filesystem every worker shares.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labkit.train import common  # noqa: E402
from labkit.train.common import TrainError  # noqa: E402

STRATEGIES = ("mirrored", "multiworker", "default")
MODELS = {"cfcm34": ("CFCM34", {}), "ladder-sum": ("LadderNet", {"fusion": "sum"}),
          "ladder-concat": ("LadderNet", {"fusion": "concat"})}


@dataclass(frozen=True)
class Workers:
    """This machine's place in a (multi-worker) run."""

    index: int = 0
    count: int = 1
    is_chief: bool = True


def split_cpu(count: int) -> None:
    """Split the CPU into ``count`` logical devices (before TensorFlow starts its runtime)."""
    if count < 1:
        raise TrainError(f"--cpu-devices must be at least 1, got {count}")
    try:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        raise TrainError("--cpu-devices must take effect before TensorFlow starts; run the trainer "
                         "in a fresh process (python -m labkit.train cfcm ...)") from None


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Workers]:
    """The ``tf.distribute`` strategy called ``name`` and this machine's place in it.

    Raises:
        TrainError: ``multiworker`` without a usable ``TF_CONFIG``.
    """
    if name == "multiworker":
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            resolver = strategy.cluster_resolver
            spec = resolver.cluster_spec()
        except (ValueError, KeyError, TypeError) as error:
            raise TrainError(f"TF_CONFIG does not describe a cluster ({error}); see "
                             "docs/TRAINING_BEYOND_ONE_GPU.md") from None
        if not spec.jobs:
            raise TrainError("--strategy multiworker needs TF_CONFIG on every machine; see "
                             "docs/TRAINING_BEYOND_ONE_GPU.md")
        chiefs = spec.num_tasks("chief") if "chief" in spec.jobs else 0
        index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
        return strategy, Workers(index, chiefs + spec.num_tasks("worker"), strategy.extended.should_checkpoint)
    if name == "mirrored":
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(gpus), Workers()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()), Workers()
    return tf.distribute.get_strategy(), Workers()


class ReplicaMeanOptimizer:
    """The optimiser as the notebook's step sees it: gradients divided by the replica count.

    Everything but ``apply`` (``scale_loss``, ``learning_rate``, ``iterations``...) is the
    wrapped optimiser's, which is what checkpoints save.
    """

    def __init__(self, optimizer, replicas: int):
        self.optimizer, self.replicas = optimizer, int(replicas)

    def apply(self, gradients, variables=None):
        if self.replicas > 1:
            gradients = [None if gradient is None else gradient / self.replicas for gradient in gradients]
        return self.optimizer.apply(gradients, variables)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def distribute_batch(strategy, batch: dict, per_replica: int, first_replica: int):
    """The batch's ``(image, label)`` as per-replica values: replica r gets its own slice."""

    def per_replica_value(array):
        def value(context):
            local = context.replica_id_in_sync_group - first_replica
            return tf.constant(array[local * per_replica:(local + 1) * per_replica, ..., None])
        return strategy.experimental_distribute_values_from_function(value)

    return per_replica_value(batch["image"]), per_replica_value(batch["label"])


def make_distributed_step(strategy, train_step):
    """``strategy.run`` of the notebook's step on every replica; loss and Dice averaged over them."""

    @tf.function
    def distributed_step(image, label):
        loss, score = strategy.run(train_step, args=(image, label))
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, score, axis=None)

    return distributed_step


def _variable(weight):
    """The TensorFlow variable behind a Keras variable."""
    value = getattr(weight, "value", weight)
    return weight if callable(value) else value


def average_statistics(strategy, net) -> None:
    """Average the batch-norm moving statistics over the replicas (each saw its own slice)."""
    weights = [weight for weight in net.non_trainable_weights if "float" in str(weight.dtype)]
    if strategy.num_replicas_in_sync == 1 or not weights:
        return

    def replica_average():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(_variable(w)) for w in weights])
        for weight, mean in zip(weights, means, strict=True):
            weight.assign(mean)

    tf.function(lambda: strategy.run(replica_average))()


def replica_weight_spread(strategy, net) -> float:
    """The largest difference between the local replicas' copies of any weight (0.0 when in sync)."""
    spread = 0.0
    for weight in net.weights:
        copies = [np.asarray(copy) for copy in strategy.experimental_local_results(_variable(weight))]
        for copy in copies[1:]:
            spread = max(spread, float(np.max(np.abs(copy - copies[0]))) if copy.size else 0.0)
    return spread


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labkit.train cfcm",
                                     description="Train Lab 2's CFCM network with tf.distribute.")
    common.add_common_arguments(parser)
    parser.add_argument("--strategy", choices=STRATEGIES, default="mirrored",
                        help="mirrored: this machine's GPUs; multiworker: several machines (TF_CONFIG); default: one device")
    parser.add_argument("--model", choices=tuple(MODELS), default="cfcm34", help="the lab's network to train")
    parser.add_argument("--blocks", type=common.size_argument, default=None,
                        help="basic blocks per encoder stage, e.g. 1,1,1,1 for quick checks (default: 3,4,6,3)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="split the CPU into N logical devices (try MirroredStrategy without a GPU)")
    parser.add_argument("--no-augment", action="store_true", help="train without the random affine / intensity changes")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; returns the metrics record (written by the chief)."""
    import keras

    from labkit import paths, tf_utils
    from labkit.data import lung
    from labkit.data.batching import BatchIterator
    from labkit.data.transforms import Shuffle
    from labkit.runs import Run

    profile = common.settings_from_arguments(args, "cfcm")
    if args.cpu_devices is not None:
        split_cpu(args.cpu_devices)
    settings = profile.cfcm
    setup = tf_utils.configure(seed=profile.seed, mixed_precision=settings.mixed_precision, xla=settings.xla)
    strategy, workers = make_strategy(args.strategy)  # before any other TensorFlow work
    lab = common.import_lab("cfcm")
    replicas = strategy.num_replicas_in_sync
    local_replicas = max(1, replicas // workers.count)
    lr = common.scaled_lr(settings.lr, replicas, args.lr_scaling)

    splits = profile.limit(lung.load_splits(), "cfcm")
    preprocessing = lung.preprocessing(settings.image_size)
    options = dict(before=preprocessing, seed=profile.seed, progress=False)
    local_batch = settings.batch_size * local_replicas
    train_batches = BatchIterator(splits["train"], local_batch, each_epoch=[Shuffle()], shuffle=False,
                                  each_batch=[] if args.no_augment else lab.augmentation, drop_last=True,
                                  rank=workers.index, world_size=workers.count, **options,
                                  prefetch=2 if tf.config.list_physical_devices("GPU") else 0)  # as the notebook
    if len(train_batches) == 0:
        raise TrainError(f"{len(splits['train'])} training cases cannot fill one step of {local_batch} "
                         "cases on this worker; lower --batch-size or use fewer devices")
    evaluation = {name: BatchIterator(cases, settings.batch_size, shuffle=False, **options)
                  for name, cases in splits.items() if cases}

    with strategy.scope():
        keras.utils.set_random_seed(profile.seed)  # the same first weights on every worker
        class_name, model_options = MODELS[args.model]
        if args.blocks is not None:
            model_options = {**model_options, "layers": tuple(args.blocks)}
        net = getattr(lab, class_name)(settings.base_filters, **model_options)
        optimizer = keras.optimizers.Adam(lr)
        if setup.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        net(tf.zeros((1, *settings.image_size, 1)))  # every weight exists before restoring
        optimizer.build(net.trainable_variables)
        record = {**asdict(settings), "lr": lr, "seed": profile.seed, "model": args.model,
                  "blocks": list(args.blocks or (3, 4, 6, 3)), "strategy": args.strategy,
                  "replicas": replicas, "lr_scaling": args.lr_scaling, "augment": not args.no_augment}
        run = Run("cfcm", profile.name, args.run_name or args.strategy, record,
                  tf_utils.Checkpoint(net, optimizer), resume=not args.fresh, is_main=workers.is_chief)
    xla = setup.xla and replicas == 1  # collectives inside XLA: not on every platform
    train_step, validation_step = lab.make_steps(net, ReplicaMeanOptimizer(optimizer, replicas), xla=xla)

    distributed_step = make_distributed_step(strategy, train_step)
    if workers.is_chief:
        print(f"[labkit.train] {setup} | {args.strategy}: {replicas} replica(s) on {workers.count} "
              f"worker(s) | global batch {settings.batch_size * replicas} | lr {lr:g}", flush=True)
    for epoch in run.epochs(settings.max_epochs):
        train_batches.set_epoch(epoch)
        totals = np.zeros(2)
        for step, batch in enumerate(train_batches):
            image, label = distribute_batch(strategy, batch, settings.batch_size, workers.index * local_replicas)
            loss, score = distributed_step(image, label)
            totals += (tf_utils.check_loss(loss, step), float(score))
        average_statistics(strategy, net)
        validation = lab.evaluate(validation_step, evaluation["validation"])
        train_loss, train_dice = totals / len(train_batches)
        run.end_epoch(train_loss=train_loss, validation_loss=validation["loss"], train_dice=train_dice,
                      validation_dice=validation["dice"])
        if workers.is_chief:
            print(f"[labkit.train] epoch {epoch + 1}/{settings.max_epochs} train Dice {train_dice:.4f} "
                  f"validation Dice {validation['dice']:.4f}", flush=True)
    spread = replica_weight_spread(strategy, net)
    run.load_best()
    scores = {split: lab.evaluate(validation_step, batches)["cases"]
              for split, batches in evaluation.items()} if workers.is_chief else {}
    result = run.finish(device=f"{setup.device} x{replicas} ({type(strategy).__name__})",
                        data_source=paths.data_source(lung.dataset_dir()),
                        test_dice=common.mean_or_none(scores.get("test", {})),
                        per_case=common.per_case_rows(scores), replica_weight_spread=spread,
                        global_batch_size=settings.batch_size * replicas, xla=xla,
                        peak_gpu_memory_mb=tf_utils.peak_memory_mb())
    if workers.is_chief:
        common.say_finished(run, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    from labkit.data.errors import DataError
    from labkit.runs import CheckpointError, SettingsChanged, TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (TrainError, DataError, CheckpointError, SettingsChanged, TrainingDiverged) as error:
        print(f"labkit.train cfcm: error: {error}", file=sys.stderr)
        return 2
    return 0
