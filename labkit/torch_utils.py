"""PyTorch plumbing for Lab 1: device, seeding, mixed precision and atomic checkpoints.

Only the V-Net lab imports this module (it imports torch at the top); ``import labkit`` never does.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from labkit.io import atomic_path
from labkit.runs import CheckpointError, TrainingDiverged, check_loss  # noqa: F401 (re-exported)


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to train on: CUDA when a GPU is usable, else the CPU.

    Apple's MPS is not chosen automatically (some 3D operations the lab uses are missing or
    slow there); pass ``prefer="mps"`` to try it.

    Args:
        prefer: force a device ("cpu", "cuda", "cuda:1", "mps"); None chooses automatically.

    Raises:
        ValueError: when ``prefer`` names a device this machine does not have.
    """
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} was asked for but PyTorch sees no CUDA GPU; "
                             "use 'cpu' or leave the device to be chosen automatically")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"device {prefer!r} was asked for but this PyTorch has no usable MPS; "
                             "use 'cpu' or leave the device to be chosen automatically")
        return device
    # Note the call: `torch.cuda.is_available` without () is a function object, always truthy.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_threads(threads: int | None = None) -> int:
    """Set how many threads PyTorch uses on the CPU; returns the number set.

    The policy, chosen by ``make bench`` (threads section), is every core this process may use
    (``threads=None``). When other programs keep the cores busy, PyTorch's threads wait for each
    other and an epoch can take several times longer: then pass ``threads=1``.
    """
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            threads = os.cpu_count() or 1
    if int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(int(threads))
    return int(threads)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (all devices) and, when ``deterministic``, ask for
    deterministic kernels: on the CPU the results are then bit-for-bit repeatable. On a GPU a few
    3D kernels (e.g. the transposed convolution's backward pass) have no deterministic version;
    they are allowed with a warning instead of an error (``warn_only=True``).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device | str, enabled: bool = True):
    """Mixed-precision context for the forward pass on ``device``: float16 on CUDA when
    ``enabled``, else a context that does nothing (full float32)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def save_checkpoint(path: str | os.PathLike, **state) -> Path:
    """Write ``state`` (state dicts, epoch, history...) to ``path`` atomically: a kernel killed
    mid-save leaves the previous checkpoint intact.

    Example:
        >>> save_checkpoint(folder / "last.pt", epoch=3, net=net.state_dict())  # doctest: +SKIP
    """
    path = Path(path)
    with atomic_path(path, suffix=".pt.tmp") as temporary:
        torch.save(state, temporary)
    return path


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Uses ``weights_only=True``: a checkpoint cannot run code when it is loaded.

    Raises:
        CheckpointError: when the file is missing or unreadable (names it, says what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there; train first or check RUN_NAME")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated file, pickle of an unknown class, ...
        raise CheckpointError(f"{path}: cannot read this checkpoint ({type(error).__name__}: "
                              f"{error}); delete it to start the run afresh") from error


class Checkpoint:
    """The run folder's checkpoints for :class:`labkit.runs.Run`, in PyTorch.

    ``last.pt`` holds the state of every object (network, optimiser, gradient scaler) after
    the last finished epoch; ``best.pt`` the network of the best validation epoch.

    Args:
        net: the network (the plain module, not a ``DistributedDataParallel`` wrapper).
        **others: anything else with ``state_dict`` / ``load_state_dict`` (optimizer=..., scaler=...).
    """

    def __init__(self, net, **others):
        self.net = net
        self.objects = {"net": net, **others}

    def _device(self):
        return next(self.net.parameters()).device

    def restore(self, folder) -> int | None:
        """Load ``last.pt`` into the objects; the epochs it holds (None without one)."""
        path = Path(folder) / "last.pt"
        if not path.is_file():
            return None
        state = load_checkpoint(path, map_location=self._device())
        try:
            for name, thing in self.objects.items():
                thing.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{path} does not fit this network ({str(error).splitlines()[0]}); "
                                  "choose another run name or delete the folder") from None
        return int(state["epochs"])

    def save(self, folder, epochs: int, best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``best``); nothing when ``folder`` is None."""
        if folder is None:
            return
        save_checkpoint(Path(folder) / "last.pt", epochs=epochs,
                        **{name: thing.state_dict() for name, thing in self.objects.items()})
        if best:
            save_checkpoint(Path(folder) / "best.pt", epochs=epochs, net=self.net.state_dict())

    def load_best(self, folder) -> bool:
        """Load ``best.pt`` into the network; False when there is none."""
        path = Path(folder) / "best.pt"
        if not path.is_file():
            return False
        self.net.load_state_dict(load_checkpoint(path, map_location=self._device())["net"])
        return True

    def clear(self, folder) -> None:
        for name in ("last.pt", "best.pt"):
            (Path(folder) / name).unlink(missing_ok=True)


def peak_memory_mb(device) -> float | None:
    """Peak GPU memory allocated by PyTorch in this process, in MB (None on a CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_steps(step, device, steps: int = 5) -> tuple[float, float | None]:
    """Seconds per call of ``step()`` (one training step on ``device``), the mean of ``steps``
    calls, and the peak GPU memory it needs in GB (None on a CPU).

    A first call warms up (cuDNN chooses its kernels) and is not timed; on a GPU the clock starts
    and stops on a synchronised device, so it measures the work, not the queueing of it.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step()
    if cuda:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    return seconds, torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None


__all__ = ["Checkpoint", "CheckpointError", "TrainingDiverged", "autocast", "check_loss",
           "cpu_threads", "load_checkpoint", "peak_memory_mb", "pick_device", "save_checkpoint",
           "seed_everything", "time_steps"]
