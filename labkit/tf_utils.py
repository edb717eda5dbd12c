"""TensorFlow helpers for Lab 2: GPU memory growth, seeding, mixed precision, checkpoints.

Imported only by the Lab 2 notebook and its tests (``import labkit`` never imports TensorFlow).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labkit.io import atomic_path  # noqa: E402
from labkit.runs import CheckpointError, TrainingDiverged, check_loss  # noqa: F401 (re-exported)

CHECKPOINT_FOLDER = "checkpoints"


@dataclass(frozen=True)
class TFSetup:
    """What :func:`configure` found and switched on."""

    device: str  # "GPU: <name>" or "CPU"
    gpus: int
    mixed_precision: bool
    xla: bool
    deterministic: bool

    def __str__(self) -> str:
        return (f"TensorFlow {tf.__version__} on {self.device} | mixed precision "
                f"{'on' if self.mixed_precision else 'off'} | XLA {'on' if self.xla else 'off'} | "
                f"deterministic ops {'on' if self.deterministic else 'off'}")


def configure(seed: int, mixed_precision: bool = False, xla: bool = False) -> TFSetup:
    """Set TensorFlow up for the lab: memory growth, seeds, precision, determinism.

    Mixed precision and XLA are switched on only when a GPU is visible (they slow a CPU
    down); on a CPU the ops are made deterministic so a seeded run replays exactly.

    Args:
        seed: seeds Python's, NumPy's and TensorFlow's generators (``keras.utils.set_random_seed``).
        mixed_precision: float16 compute with float32 weights (``mixed_float16`` policy), GPU only.
        xla: whether the training step should be compiled with XLA (``jit_compile``), GPU only.

    Returns a :class:`TFSetup` saying what is on; ``str()`` of it is a one-line summary.
    """
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was already initialised: growth can no longer change
            pass
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    use_mixed = bool(mixed_precision and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    deterministic = not gpus
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    device = f"GPU: {_gpu_name(gpus[0])}" if gpus else "CPU"
    return TFSetup(device=device, gpus=len(gpus), mixed_precision=use_mixed,
                   xla=bool(xla and gpus), deterministic=deterministic)


def _gpu_name(gpu) -> str:
    try:
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    except (RuntimeError, ValueError):
        return gpu.name


def _trackables(objects: dict) -> dict:
    """The objects, plus the full variable list of every Keras layer, model or optimizer.

    ``tf.train.Checkpoint`` reaches a Keras 3 model's trainable weights through the model but
    not its non-trainable ones (batch-norm moving means and variances), so a restored network
    would predict differently in inference mode. Listing every variable explicitly fixes that.
    """
    import keras

    found = {}
    for name, value in objects.items():
        found[name] = value
        if isinstance(value, (keras.layers.Layer, keras.optimizers.Optimizer)):
            found[f"{name}_variables"] = list(value.variables)
    return found


def save_checkpoint(folder: str | os.PathLike, number: int | None = None, max_to_keep: int = 2,
                    **objects) -> Path:
    """Save ``objects`` (a model, an optimizer, a ``tf.Variable`` epoch...) under
    ``folder/checkpoints`` as checkpoint ``number`` (default: one more than the newest), keeping
    the ``max_to_keep`` newest; returns the new checkpoint's path prefix.

    TensorFlow writes the data files first and then atomically replaces the small ``checkpoint``
    index file that names the latest save, so an interrupted save leaves the previous one in use.
    """
    if not objects:
        raise ValueError("nothing to checkpoint: pass the objects as keywords, e.g. net=net, optimizer=optimizer")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**_trackables(objects)),
                                         str(Path(folder) / CHECKPOINT_FOLDER), max_to_keep=max_to_keep)
    if number is None:
        latest = latest_checkpoint(folder)
        number = int(latest.name.rsplit("-", 1)[-1]) + 1 if latest else 1
    return Path(manager.save(checkpoint_number=int(number)))


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``folder/checkpoints``, or None."""
    found = tf.train.latest_checkpoint(str(Path(folder) / CHECKPOINT_FOLDER))
    return Path(found) if found else None


def restore_checkpoint(folder: str | os.PathLike, **objects) -> Path | None:
    """Restore ``objects`` from the newest checkpoint under ``folder/checkpoints``; its path, or
    None when the folder has none (a fresh run). A checkpoint that does not fit the objects
    (another model or settings) is a :class:`CheckpointError` naming the folder.

    The objects must be built (call the model once on a batch, ``optimizer.build(variables)``)
    so every variable exists, including batch-norm statistics and optimizer moments.
    """
    path = latest_checkpoint(folder)
    if path is None:
        return None
    try:
        status = tf.train.Checkpoint(**_trackables(objects)).restore(str(path))
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise CheckpointError(
            f"{path}: this checkpoint does not fit the model being trained "
            f"({(str(error).strip().splitlines() or [type(error).__name__])[0][:200]}). "
            f"It was written by another model or other settings: choose another RUN_NAME or "
            f"delete {Path(folder) / CHECKPOINT_FOLDER}."
        ) from None
    return path


def count_parameters(net) -> int:
    """Trainable parameters of a built Keras model."""
    return int(sum(np.prod(variable.shape) for variable in net.trainable_weights))


class Checkpoint:
    """The run folder's checkpoints for :class:`labkit.runs.Run`, in TensorFlow.

    ``checkpoints/`` holds the network, the optimiser and the epoch count after the last
    finished epoch (:func:`save_checkpoint`); ``best.weights.h5`` the network's weights at the
    best validation epoch. Build the network ``net`` and ``optimizer.build(...)`` first.
    """

    BEST = "best.weights.h5"

    def __init__(self, net, optimizer):
        self.net = net
        self.epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.objects = {"net": net, "optimizer": optimizer, "epoch": self.epochs}

    def restore(self, folder) -> int | None:
        """Restore the newest checkpoint; the epochs it holds (None without one)."""
        return None if restore_checkpoint(folder, **self.objects) is None else int(self.epochs.numpy())

    def save(self, folder, epochs: int, best: bool) -> None:
        """Save the objects (and the best weights when ``best``).

        With ``folder`` None (a worker other than the chief of a multi-worker run) the save
        goes to a temporary folder that is then deleted: every worker must take part.
        """
        self.epochs.assign(epochs)
        if folder is None:
            scratch = tempfile.mkdtemp(prefix="labkit-worker-")
            try:
                save_checkpoint(scratch, number=epochs, **self.objects)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        save_checkpoint(folder, number=epochs, **self.objects)
        if best:
            with atomic_path(Path(folder) / self.BEST, suffix=".weights.h5") as temporary:
                self.net.save_weights(str(temporary))

    def load_best(self, folder) -> bool:
        """Load the best epoch's weights into the network; False when there are none."""
        path = Path(folder) / self.BEST
        if not path.is_file():
            return False
        self.net.load_weights(str(path))
        return True

    def clear(self, folder) -> None:
        shutil.rmtree(Path(folder) / CHECKPOINT_FOLDER, ignore_errors=True)
        (Path(folder) / self.BEST).unlink(missing_ok=True)


def peak_memory_mb() -> float | None:
    """Peak memory TensorFlow allocated on the first GPU, in MB (None without a GPU)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


__all__ = ["Checkpoint", "CheckpointError", "TFSetup", "TrainingDiverged", "check_loss", "configure",
           "count_parameters", "latest_checkpoint", "peak_memory_mb", "restore_checkpoint",
           "save_checkpoint"]
