"""Lab 2 (CFCM, TensorFlow) on several devices with ``tf.distribute``.

``python -m labkit.train cfcm --strategy mirrored|multiworker|default [options]``

=============  ==================================================================
strategy       devices
=============  ==================================================================
mirrored       every GPU of this machine (``MirroredStrategy``); without GPUs the CPU,
               which ``--cpu-devices N`` splits into N logical devices (for tests)
multiworker    every GPU of several machines (``MultiWorkerMirroredStrategy``); each
               machine runs the same command with its own ``TF_CONFIG``
default        one device, no strategy (the notebook's behaviour)
=============  ==================================================================

The network (``CFCM34`` / ``LadderNet``) and the training and validation steps
(``make_steps``) come from ``labkit.labs.cfcm``, written from the notebook by ``make export``.
Each replica runs the notebook's training step on its slice of the global batch
(``strategy.run``); the losses are averaged across replicas (``strategy.reduce``).

Batches: ``--batch-size`` is per replica; the global batch is that times the replicas. A
worker's ``BatchIterator`` holds its share of the cases (``rank`` = worker index) and hands
each local replica its slice through ``strategy.experimental_distribute_values_from_function``.

Gradients: Keras optimisers SUM the replicas' gradients; the notebook's loss is a per-replica
mean, so the optimiser is handed to the step through :class:`ReplicaMeanOptimizer`, which
divides each gradient by the number of replicas first: the update is that of the mean
gradient over the global batch, as on one device with the global batch.

Outputs (written by the chief only): ``<runs>/cfcm-<profile>-<run name>/`` with
``checkpoints/`` (the notebook's format: a run continues in either), ``history.json``,
``settings.json`` and ``metrics.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labkit import metrics as labkit_metrics  # noqa: E402
from labkit.train import common  # noqa: E402
from labkit.train.common import TrainError  # noqa: E402

STRATEGIES = ("mirrored", "multiworker", "default")
MODELS = {"cfcm34": ("CFCM34", {}), "ladder-sum": ("LadderNet", {"fusion": "sum"}),
          "ladder-concat": ("LadderNet", {"fusion": "concat"})}


# ----------------------------------------------------------------------------------------------
# Strategy and workers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workers:
    """This machine's place in a (multi-worker) run."""

    index: int = 0
    count: int = 1
    is_chief: bool = True


def split_cpu(count: int) -> None:
    """Split the CPU into ``count`` logical devices (before TensorFlow starts its runtime).

    Raises:
        TrainError: when TensorFlow has already started and the split can no longer be made.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        raise TrainError("--cpu-devices must take effect before TensorFlow starts; run the trainer "
                         "in a fresh process (python -m labkit.train cfcm ...)") from None


def read_tf_config(environ=None) -> dict:
    """The parsed ``TF_CONFIG`` (``{}`` when unset).

    Raises:
        TrainError: when it is not JSON or lacks the ``cluster`` / ``task`` entries.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as error:
        raise TrainError(f"TF_CONFIG is not valid JSON ({error}); see 'Training beyond one GPU' in README.md") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise TrainError("TF_CONFIG needs a 'cluster' (worker addresses) and a 'task' ({'type': "
                         "'worker', 'index': i}); see 'Training beyond one GPU' in README.md")
    return config


def workers_from_tf_config(config: dict) -> Workers:
    """Worker index / count and whether this one is the chief (worker 0 unless a chief is listed)."""
    if not config:
        return Workers()
    cluster, task = config["cluster"], config["task"]
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    position = index if kind == "chief" else chiefs + index
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and chiefs == 0)
    return Workers(index=position, count=max(1, chiefs + workers), is_chief=is_chief)


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Workers]:
    """The ``tf.distribute`` strategy called ``name`` and this machine's place in it.

    Raises:
        TrainError: ``multiworker`` without ``TF_CONFIG``, or an unknown name.
    """
    if name == "multiworker":
        config = read_tf_config()
        if not config:
            raise TrainError("--strategy multiworker needs TF_CONFIG on every machine (cluster "
                             "addresses and this machine's index); see 'Training beyond one GPU' in README.md")
        return tf.distribute.MultiWorkerMirroredStrategy(), workers_from_tf_config(config)
    if name == "mirrored":
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
        if devices:
            return tf.distribute.MirroredStrategy(devices), Workers()
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice()), Workers()
    if name == "default":
        return tf.distribute.get_strategy(), Workers()
    raise TrainError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


class ReplicaMeanOptimizer:
    """The optimiser as the notebook's step sees it: gradients divided by the replica count.

    Keras optimisers all-reduce gradients with a SUM across replicas; the notebook's step
    differentiates a per-replica mean loss. Dividing each gradient by the number of replicas
    first makes the applied update that of the mean over the global batch. Everything else
    (``scale_loss``, ``learning_rate``, ``iterations``...) is the wrapped optimiser's.

    Args:
        optimizer: a built Keras optimiser (what checkpoints save).
        replicas: ``strategy.num_replicas_in_sync``.
    """

    def __init__(self, optimizer, replicas: int):
        self.optimizer = optimizer
        self.replicas = int(replicas)

    def apply(self, gradients, variables=None):
        """Apply the replica-mean gradients (the wrapped optimiser all-reduces them)."""
        if self.replicas > 1:
            gradients = [None if gradient is None else gradient / self.replicas for gradient in gradients]
        return self.optimizer.apply(gradients, variables)

    def apply_gradients(self, pairs):
        """``apply`` for ``[(gradient, variable), ...]``."""
        pairs = list(pairs)
        return self.apply([gradient for gradient, _ in pairs], [variable for _, variable in pairs])

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def load_cases(max_cases: int | None) -> tuple[dict, str]:
    """The lung split (every split capped at ``max_cases``, as in the notebook) and the data source."""
    from labkit import paths
    from labkit.data import lung

    split = lung.load_splits()
    limit = None if max_cases is None else int(max_cases)
    return ({name: list(cases)[:limit] for name, cases in split.items()},
            paths.data_source(lung.dataset_dir()))


def make_batches(cases: dict, settings, seed: int, local_batch: int, workers: Workers,
                 worker_count_for_data: int, augment: bool, prepare_workers=None) -> dict:
    """``BatchIterator`` s: training sharded across workers (full batches), evaluation whole.

    Args:
        local_batch: cases per step on this worker (per-replica batch x local replicas).
        worker_count_for_data: how many workers share the training cases.
    """
    from labkit.data import lung
    from labkit.data.batching import BatchIterator
    from labkit.data.transforms import RandomAffine, RandomIntensity, Shuffle

    preprocessing = lung.preprocessing(settings.image_size)
    augmentation = [RandomAffine(["image", "label"], orders=(1, 0), degrees=5.0, scale=(0.95, 1.05), spatial_dims=2),
                    RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.05, 0.05))] if augment else []
    common_options = dict(before=preprocessing, seed=seed, workers=prepare_workers, progress=False)
    prefetch = 2 if tf.config.list_physical_devices("GPU") else 0  # assemble while the GPU works
    train = BatchIterator(cases["train"], local_batch, each_epoch=[Shuffle()], each_batch=augmentation,
                          shuffle=False, drop_last=True, rank=workers.index,
                          world_size=worker_count_for_data, prefetch=prefetch, **common_options)
    if len(train) == 0:
        raise TrainError(f"{len(cases['train'])} training cases cannot fill one step of {local_batch} "
                         f"cases on this worker; lower --batch-size or use fewer devices")
    evaluation = {name: BatchIterator(cases[name], settings.batch_size, shuffle=False, **common_options)
                  for name in ("train", "validation", "test") if cases[name]}
    return {"train": train, "evaluation": evaluation}


def distribute_batch(strategy, batch: dict, per_replica: int, first_replica: int):
    """The batch's ``(image, label)`` as per-replica values: replica r gets its own slice."""
    image = batch["image"][..., None].astype(np.float32)
    label = batch["label"][..., None].astype(np.float32)

    def slice_for(array):
        def value(context):
            local = context.replica_id_in_sync_group - first_replica
            return tf.constant(array[local * per_replica:(local + 1) * per_replica])
        return strategy.experimental_distribute_values_from_function(value)

    return slice_for(image), slice_for(label)


# ----------------------------------------------------------------------------------------------
# Model, steps, checkpoints
# ----------------------------------------------------------------------------------------------
def build_model(lab, model: str, settings, setup, blocks=None):
    """The lab's network (under the current strategy scope), built, with its optimiser.

    Args:
        blocks: basic blocks per encoder stage (None: ResNet34's 3, 4, 6, 3).
    """
    import keras

    class_name, options = MODELS[model]
    net_class = common.lab_attribute(lab, (class_name,), f"{class_name} class")
    if blocks is not None:
        options = {**options, "layers": tuple(blocks)}
    net = net_class(settings.base_filters, **options)
    optimizer = keras.optimizers.Adam(settings.lr)
    if setup.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    net(tf.zeros((1, *settings.image_size, 1)))  # every weight exists before restoring
    optimizer.build(net.trainable_variables)
    return net, optimizer


def make_distributed_step(strategy, train_step):
    """``strategy.run`` of the notebook's step on every replica, losses averaged across them."""

    @tf.function
    def distributed_step(image, label):
        loss, score = strategy.run(train_step, args=(image, label))
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, score, axis=None)

    return distributed_step


def average_statistics(strategy, net) -> None:
    """Average the non-trainable float weights (batch-norm moving statistics) over the replicas.

    Each replica updates its copy of the moving mean and variance from its own slice of the
    batch, so the copies drift apart; averaging them (once per epoch, before validating and
    saving) gives every replica, and the checkpoint, the statistics of the whole global batch.
    Trainable weights need nothing: the optimiser keeps them identical.
    """
    weights = [weight for weight in net.non_trainable_weights if "float" in str(weight.dtype)]
    if strategy.num_replicas_in_sync == 1 or not weights:
        return

    def replica_average():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(_tf_variable(w)) for w in weights])
        for weight, mean in zip(weights, means, strict=True):
            weight.assign(mean)

    tf.function(lambda: strategy.run(replica_average))()


def check_workers_resume_together(strategy, epoch, workers: Workers) -> None:
    """Every worker must resume from the same epoch (each reads its own run folder).

    Raises:
        TrainError: on every worker at once, when their checkpoints differ.
    """
    if workers.count == 1:
        return

    def replica_moments():
        context = tf.distribute.get_replica_context()
        value = tf.cast(tf.identity(_tf_variable(epoch)), tf.float64)
        return context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.stack([value, value * value]))

    moments = strategy.experimental_local_results(tf.function(lambda: strategy.run(replica_moments))())[0]
    mean, mean_square = (float(value) for value in np.asarray(moments))
    if mean_square - mean * mean > 1e-9:
        raise TrainError("the workers found different checkpoints in their run folders; put LABKIT_RUNS "
                         "on a filesystem every machine shares, or copy the chief's run folder to the "
                         "others, then start again")


def replica_weight_spread(strategy, net) -> float:
    """The largest difference between the local replicas' copies of any weight (0.0 when in sync)."""
    spread = 0.0
    for variable in net.weights:
        copies = [np.asarray(copy) for copy in strategy.experimental_local_results(_tf_variable(variable))]
        for copy in copies[1:]:
            spread = max(spread, float(np.max(np.abs(copy - copies[0]))) if copy.size else 0.0)
    return spread


def _tf_variable(variable):
    """The TensorFlow variable behind a Keras variable (a TensorFlow variable as it is)."""
    value = getattr(variable, "value", variable)
    return variable if callable(value) else value


def save_state(folder: Path, workers: Workers, number: int, state: dict) -> None:
    """The chief writes the run folder's checkpoint; other workers write a throw-away copy.

    Every worker takes part in a multi-worker save (TensorFlow's rule); only the chief's is kept.
    """
    from labkit import tf_utils

    if workers.is_chief:
        tf_utils.save_checkpoint(folder, number=number, **state)
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"labkit-worker-{workers.index}-"))
    try:
        tf_utils.save_checkpoint(scratch, number=number, **state)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def evaluate(validation_step, batches, limit: int | None = None) -> tuple[dict, float, float]:
    """Per-case Dice of the binarised prediction, and the mean loss and Dice over ``batches``."""
    scores, totals, count = {}, np.zeros(2), 0
    for number, batch in enumerate(batches):
        if limit is not None and number >= limit:
            break
        image = tf.constant(batch["image"][..., None].astype(np.float32))
        label = tf.constant(batch["label"][..., None].astype(np.float32))
        loss, score, pred = validation_step(image, label)
        totals += len(batch["id"]) * np.array([float(loss), float(score)])
        count += len(batch["id"])
        for case_id, case_pred, case_label in zip(batch["id"], np.asarray(pred)[..., 0], batch["label"], strict=True):
            scores[case_id] = labkit_metrics.dice(case_pred > 0.5, case_label > 0.5)
    loss, score = totals / max(count, 1)
    return scores, float(loss), float(score)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.train cfcm",
        description="Train Lab 2's CFCM network with tf.distribute (MirroredStrategy, MultiWorkerMirroredStrategy).")
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
    from labkit import tf_utils

    common.apply_environment(args)
    profile, settings = common.settings_from_arguments(args, "cfcm")
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise TrainError(f"--cpu-devices must be at least 1, got {args.cpu_devices}")
        split_cpu(args.cpu_devices)
    setup = tf_utils.configure(seed=profile.seed, mixed_precision=settings.mixed_precision, xla=settings.xla)
    strategy, workers = make_strategy(args.strategy)  # before any other TensorFlow work
    trainer = Trainer(args, profile, settings, setup, strategy, workers)
    trainer.fit()
    return trainer.finish()


class Trainer:
    """This worker's part of a run: its data, the lab's network and steps, the chief's outputs."""

    def __init__(self, args, profile, settings, setup, strategy, workers: Workers):
        self.args, self.profile, self.setup, self.strategy, self.workers = args, profile, setup, strategy, workers
        self.replicas = strategy.num_replicas_in_sync
        self.local_replicas = max(1, self.replicas // workers.count)
        self.lr = common.scaled_lr(settings.lr, self.replicas, args.lr_scaling)
        self.settings = profile.with_cfcm(lr=self.lr).cfcm
        self.folder = common.run_folder("cfcm", f"{profile.name}-{args.run_name or args.strategy}")
        self.log = common.RunLog(self.folder, workers.is_chief)
        self.log.info(f"{setup} | {args.strategy} ({type(strategy).__name__}): {self.replicas} replica(s) on "
                      f"{workers.count} worker(s) | batch {self.settings.batch_size} per replica, "
                      f"{self.global_batch} global | lr {self.lr:g}")
        cases, self.data_source = load_cases(self.settings.max_cases)
        self.batches = make_batches(cases, self.settings, profile.seed, self.settings.batch_size * self.local_replicas,
                                    workers, workers.count, augment=not args.no_augment,
                                    prepare_workers=args.workers)
        self.lab = common.import_lab("cfcm")
        self._build()

    @property
    def global_batch(self) -> int:
        return self.settings.batch_size * self.replicas

    def _build(self) -> None:
        """The lab's network and optimiser under the strategy, the last checkpoint, the steps."""
        import keras

        make_steps = common.lab_attribute(self.lab, ("make_steps",), "make_steps(net, optimizer, xla) function")
        with self.strategy.scope():
            keras.utils.set_random_seed(self.profile.seed)  # the same initial weights on every worker
            self.net, self.optimizer = build_model(self.lab, self.args.model, self.settings, self.setup,
                                                   self.args.blocks)
            self.epoch = tf.Variable(0, dtype=tf.int64)
            seed = tf.Variable(self.profile.seed, dtype=tf.int64, trainable=False)  # saved with the weights
        self.state = dict(net=self.net, optimizer=self.optimizer, epoch=self.epoch, seed=seed)
        self.record = {"lab": "cfcm", "model": self.args.model, **asdict(self.settings),
                       "blocks": list(self.args.blocks or (3, 4, 6, 3)), "strategy": self.args.strategy,
                       "replicas": self.replicas, "workers": self.workers.count, "seed": self.profile.seed}
        self.log.history = _restore(self.folder, self.state, self.record, self.args.fresh, self.log)
        check_workers_resume_together(self.strategy, self.epoch, self.workers)
        if self.workers.is_chief:
            common.write_settings(self.folder, self.record)
        self.xla = self.setup.xla and self.replicas == 1  # collectives inside XLA: not on every platform
        train_step, self.validation_step = make_steps(self.net, ReplicaMeanOptimizer(self.optimizer, self.replicas),
                                                      xla=self.xla)
        self.distributed_step = make_distributed_step(self.strategy, train_step)
        self.started = time.perf_counter()

    def fit(self) -> None:
        """The remaining epochs: distributed steps, averaged statistics, validation, checkpoint."""
        args, max_epochs = self.args, self.settings.max_epochs
        first_replica = self.workers.index * self.local_replicas
        for current in range(int(self.epoch.numpy()), max_epochs):
            train_loss, train_dice = _train_epoch(self.strategy, self.distributed_step, self.batches["train"],
                                                  current, self.settings.batch_size, first_replica,
                                                  args.steps_per_epoch)
            average_statistics(self.strategy, self.net)
            validation = self.batches["evaluation"].get("validation")
            validation_loss, validation_dice = (
                evaluate(self.validation_step, validation, args.eval_batches)[1:]
                if validation is not None else (float("nan"), float("nan")))
            self.epoch.assign(current + 1)
            save_state(self.folder, self.workers, current + 1, self.state)
            self.log.epoch(current, max_epochs, train_loss=train_loss, validation_loss=validation_loss,
                           train_dice=train_dice, validation_dice=validation_dice)

    def finish(self) -> dict:
        """Per-case Dice of the final network on every split; the chief writes ``metrics.json``."""
        from labkit import runs

        spread = replica_weight_spread(self.strategy, self.net)
        scores = ({split: evaluate(self.validation_step, batches, self.args.eval_batches)[0]
                   for split, batches in self.batches["evaluation"].items()} if self.workers.is_chief else {})
        record = common.metrics_record(
            "cfcm", self.profile, f"{self.setup.device} x{self.replicas} ({type(self.strategy).__name__})",
            self.data_source, int(self.epoch.numpy()), time.perf_counter() - self.started,
            scores, model=self.args.model, strategy=self.args.strategy, replicas=self.replicas,
            workers=self.workers.count, per_replica_batch_size=self.settings.batch_size,
            global_batch_size=self.global_batch, lr=self.lr, lr_scaling=self.args.lr_scaling,
            replica_weight_spread=spread, history=self.log.history, settings=self.record,
            mixed_precision=self.setup.mixed_precision, xla=self.xla)
        if self.workers.is_chief:
            path = runs.write_metrics(self.folder, record)
            self.log.info(f"wrote {path} | train Dice {_shown(record['train_dice'])} | validation Dice "
                          f"{_shown(record['validation_dice'])} | test Dice {_shown(record['test_dice'])}")
        return record


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _restore(folder: Path, state: dict, current_settings: dict, fresh: bool, log) -> dict:
    """Restore the last checkpoint (unless ``fresh``); returns the history to continue."""
    from labkit import tf_utils

    if fresh:
        if (folder / tf_utils.CHECKPOINT_FOLDER).exists() and log.is_main:
            shutil.rmtree(folder / tf_utils.CHECKPOINT_FOLDER)
        return {}
    saved = _read_json(folder / common.SETTINGS_FILE)
    if tf_utils.latest_checkpoint(folder) is not None:
        common.check_same_settings(saved, current_settings, folder)
    restored = tf_utils.restore_checkpoint(folder, **state)
    if restored is None:
        return {}
    log.info(f"resuming from {restored.name}: {int(state['epoch'].numpy())} epoch(s) done")
    return _read_json(folder / common.HISTORY_FILE) or {}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def _train_epoch(strategy, distributed_step, batches, epoch: int, per_replica: int, first_replica: int,
                 max_steps: int | None) -> tuple[float, float]:
    """One epoch of distributed steps; the mean (over steps) of the replica-averaged loss and Dice."""
    from labkit import tf_utils

    batches.set_epoch(epoch)
    totals, steps = np.zeros(2), 0
    for batch in batches:
        if max_steps is not None and steps >= max_steps:
            break
        image, label = distribute_batch(strategy, batch, per_replica, first_replica)
        loss, score = distributed_step(image, label)
        totals += np.array([tf_utils.check_loss(loss, steps), float(score)])  # NaN / Inf: stop, nothing saved
        steps += 1
    return tuple(totals / max(steps, 1))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    from labkit.data.errors import DataError
    from labkit.tf_utils import CheckpointMismatch, TrainingDiverged

    try:
        run(args)
    except (TrainError, DataError, CheckpointMismatch, TrainingDiverged) as error:
        print(f"labkit.train cfcm: error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["ReplicaMeanOptimizer", "STRATEGIES", "Trainer", "Workers", "build_parser", "distribute_batch",
           "make_distributed_step", "make_strategy", "main", "read_tf_config", "replica_weight_spread",
           "run", "split_cpu", "workers_from_tf_config"]
