"""Lab 1 (V-Net, PyTorch) on several GPUs or machines with DistributedDataParallel.

``torchrun --nproc_per_node=N -m labkit.train vnet --profile gpu [--run-name NAME] [--max-epochs E]``
(or ``python -m labkit.train vnet ...`` for one process on one GPU or the CPU).

One process per device. Every process builds the same network from the same seed, and
``DistributedDataParallel`` averages the gradients across processes in each backward pass
(NCCL between GPUs, Gloo on CPUs). The network (``VNet``), the loss (``dice_loss``) and the
training and evaluation loops (``train_one_epoch``, ``evaluate``) come from
``labkit.labs.vnet``, written from the notebook by ``make export``.

Data: each process's ``BatchIterator`` holds its share of the cases (``rank`` /
``world_size``): every epoch all processes draw the same seeded order (``set_epoch``) and
take every ``world_size``-th case of it, padded so they run the same number of steps - what
``torch.utils.data.DistributedSampler`` does. ``--batch-size`` is per process; the global
batch is ``batch_size x processes x accumulate``.

Outputs (rank 0 only): ``<runs>/vnet-<profile>-<run name>/`` with ``last.pt`` (the
notebook's format: a run resumes in either), ``best.pt``, ``history.json``,
``settings.json`` and ``metrics.json``. Rerunning the same command resumes after the last
finished epoch.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from labkit import metrics as labkit_metrics
from labkit.train import common
from labkit.train.common import Rank, TrainError

LAST, BEST = "last.pt", "best.pt"
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 may prepare the data meanwhile


# ----------------------------------------------------------------------------------------------
# Processes and devices
# ----------------------------------------------------------------------------------------------
def start_processes(rank: Rank, prefer_device: str | None = None) -> torch.device:
    """Pick this process's device and, with several processes, join the process group.

    NCCL connects GPUs, Gloo CPUs. On a CPU the cores are shared out between the processes
    of a machine so they do not fight over them.

    Returns:
        The device this process trains on.
    """
    from labkit import torch_utils

    if rank.world_size == 1:
        return torch_utils.pick_device(prefer_device)
    use_cuda = torch.cuda.is_available() and prefer_device in (None, "cuda")
    if use_cuda:
        device = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT, device_id=device)
        return device
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", rank.world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_processes)))
    dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return torch.device("cpu")


def stop_processes() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_now(status: int) -> None:
    """End a process of a multi-process run at once, with ``status``, skipping the
    interpreter's clean-up (everything is written and flushed first).

    Why: ``destroy_process_group`` does not stop Gloo's worker threads, and one of them may
    still be releasing the tensors of the last collective call when Python shuts down. That
    needs the interpreter lock, which a shutting-down interpreter never hands out, and the
    C++ runtime then aborts the process (SIGABRT, "terminate called without an active
    exception": about 1 run in 25 here, seen in a core dump; pytorch/pytorch#179291
    describes the same). ``multiprocessing`` ends its child processes the same way.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(status)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier(device: torch.device) -> None:
    """Wait for every process (no-op for one process)."""
    if not distributed():
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def mean_over_ranks(values: dict, device: torch.device) -> dict:
    """Each value averaged over the processes (every process gets the same numbers)."""
    if not distributed():
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_scores(scores: dict) -> dict:
    """Every process's ``{case id: dice}`` merged (cases repeated as padding count once)."""
    if not distributed():
        return dict(scores)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, scores)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged


def rank_weight_spread(net: torch.nn.Module, device: torch.device) -> float:
    """The largest difference between any process's weights and rank 0's (0.0 when in sync)."""
    with torch.no_grad():
        flat = torch.cat([parameter.detach().reshape(-1).float() for parameter in net.parameters()])
    if not distributed():
        return 0.0
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
class FirstBatches:
    """The first ``limit`` batches of ``batches`` (all of them when ``limit`` is None)."""

    def __init__(self, batches, limit: int | None):
        self.batches, self.limit = batches, limit

    def __len__(self) -> int:
        return len(self.batches) if self.limit is None else min(self.limit, len(self.batches))

    def __iter__(self):
        return itertools.islice(iter(self.batches), len(self))


def make_batches(settings, seed: int, rank: Rank, workers: int | None, augment: bool = True) -> tuple[dict, str]:
    """This process's share of the training cases (augmented, reshuffled every epoch) and of
    every split for evaluation; returns ``({'train': it, 'evaluation': {split: it}}, data source)``.

    Training cases are capped at ``settings.max_cases`` (as in the notebook).
    """
    from labkit import paths
    from labkit.data import prostate
    from labkit.data.batching import BatchIterator
    from labkit.data.prefetch import fork_available
    from labkit.data.transforms import RandomAffine, RandomFlip, RandomIntensity

    split = common.split_cases(prostate.load_splits(), settings.max_cases)
    chain = prostate.preprocessing(spacing=settings.spacing, size=settings.image_size, labels="whole")
    both = ["image", "label"]
    augmentation = [RandomFlip(both, axes=(0,)),
                    RandomAffine(both, orders=(1, 0), degrees=10, scale=(0.9, 1.1)),
                    RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.1, 0.1))] if augment else []
    shard = dict(rank=rank.rank, world_size=rank.world_size, workers=workers, progress=False)
    # Assemble batches while the network trains: always on a GPU; on the CPU of a one-process run
    # in a worker process (PyTorch leaves it a core); never in several CPU processes at once.
    one_cpu_process = rank.world_size == 1 and fork_available()
    prefetch = 2 if torch.cuda.is_available() or one_cpu_process else 0
    train = BatchIterator(split["train"], settings.batch_size, before=chain, each_batch=augmentation,
                          shuffle=True, seed=seed, prefetch=prefetch, **shard)
    evaluation = {name: BatchIterator(cases, settings.batch_size, before=chain, shuffle=False, **shard)
                  for name, cases in split.items() if cases}
    return {"train": train, "evaluation": evaluation}, paths.data_source(prostate.dataset_dir())


def make_batches_main_first(settings, seed: int, rank: Rank, workers, device, augment: bool = True):
    """:func:`make_batches`, the first process of each machine first (it prepares and caches
    the cases; the machine's other processes then read the cache)."""
    if rank.local_rank == 0:
        made = make_batches(settings, seed, rank, workers, augment)
    barrier(device)
    if rank.local_rank != 0:
        made = make_batches(settings, seed, rank, workers, augment)
    return made


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def restore(folder: Path, net, optimizer, scaler, settings_record: dict, device, fresh: bool) -> dict:
    """Load ``last.pt`` into the network, optimiser and scaler of every process.

    Rank 0 reads the file and sends its contents to the others, so only the machine of rank 0
    needs the run folder (other nodes may have no copy of it).

    Returns:
        ``{'start_epoch', 'history', 'wall_time_s', 'restored'}``.

    Raises:
        TrainError: when the checkpoint's model-shaping settings differ from this run's.
    """
    state = _read_last(folder, settings_record, fresh) if not distributed() or dist.get_rank() == 0 else None
    if distributed():
        shared = [state]
        dist.broadcast_object_list(shared, src=0)
        state = shared[0]
    if state is not None and "error" in state:  # every process stops with rank 0's message
        raise TrainError(state["error"])
    if state is None:
        return {"start_epoch": 0, "history": {}, "wall_time_s": 0.0, "restored": None}
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return {"start_epoch": int(state["epoch"]) + 1, "history": state.get("history", {}),
            "wall_time_s": float(state.get("wall_time_s", 0.0)), "restored": Path(folder) / LAST}


def _read_last(folder: Path, settings_record: dict, fresh: bool) -> dict | None:
    """The checkpoint ``last.pt`` on the CPU (None when absent or ``fresh``); settings checked."""
    from labkit import torch_utils

    path = Path(folder) / LAST
    if fresh or not path.is_file():
        return None
    try:
        state = torch_utils.load_checkpoint(path, map_location="cpu")
        common.check_same_settings({"lab": "vnet", **state.get("settings", {})}, settings_record, folder)
    except (TrainError, torch_utils.CheckpointError) as error:
        return {"error": str(error)}
    return state


def save(folder: Path, epoch: int, net, optimizer, scaler, history: dict, settings, wall_time_s: float,
         best: bool, seed: int | None = None) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``best``) in the notebook's format (rank 0 only)."""
    from labkit import torch_utils

    if best:
        torch_utils.save_checkpoint(Path(folder) / BEST, epoch=epoch, net=net.state_dict())
    torch_utils.save_checkpoint(Path(folder) / LAST, epoch=epoch, net=net.state_dict(),
                                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                history=history, settings=asdict(settings), seed=seed,
                                wall_time_s=wall_time_s)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def case_scores(lab, net, batches, device, amp: bool, channels_last: bool) -> dict:
    """``{case id: Dice}`` of the binarised prediction for this process's cases."""
    from labkit import torch_utils

    net.eval()
    scores = {}
    for batch in batches:
        image, label = lab.to_tensors(batch, device, channels_last)
        with torch_utils.autocast(device, amp):
            logits = net(image)
        prob = torch.sigmoid(logits.float()).cpu().numpy()
        for case_id, case_prob, case_label in zip(batch["id"], prob, batch["label"], strict=True):
            scores[case_id] = labkit_metrics.dice(case_prob > 0.5, case_label > 0.5)
    return scores


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.train vnet",
        description="Train Lab 1's V-Net with DistributedDataParallel (start it with torchrun).")
    common.add_common_arguments(parser)
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="force the device (default: a GPU per process when there is one)")
    parser.add_argument("--normalization", choices=("groupnorm", "batchnorm", "none"), default=None,
                        help="normalisation layers (default: the profile's); batchnorm is synchronised across GPUs")
    parser.add_argument("--no-augment", action="store_true", help="train without random flips / affine / intensity")
    return parser


def run(args: argparse.Namespace) -> dict | None:
    """Train as ``args`` say on this process; returns the metrics record on rank 0 (else None)."""
    common.apply_environment(args)
    profile, settings = common.settings_from_arguments(args, "vnet")
    if args.normalization is not None:
        profile = profile.with_vnet(normalization=args.normalization)
        settings = profile.vnet
    rank = common.rank_from_environment()
    device = start_processes(rank, args.device)
    try:
        trainer = Trainer(args, profile, settings, rank, device)
        trainer.fit()
        return trainer.finish()
    finally:
        stop_processes()


class Trainer:
    """One process's share of a run: its data, the lab's network and loops, the rank-0 outputs."""

    def __init__(self, args, profile, settings, rank: Rank, device: torch.device):
        from labkit import torch_utils

        torch_utils.seed_everything(profile.seed)  # the same seed, so the same first weights, everywhere
        self.args, self.profile, self.settings, self.rank, self.device = args, profile, settings, rank, device
        self.amp, self.channels_last = settings.amp and device.type == "cuda", device.type == "cuda"
        self.lr = common.scaled_lr(settings.lr, rank.world_size, args.lr_scaling)
        self.folder = common.run_folder("vnet", f"{profile.name}-{args.run_name or 'ddp'}")
        self.log = common.RunLog(self.folder, rank.is_main)
        self.log.info(self._describe())
        self.batches, self.data_source = make_batches_main_first(
            settings, profile.seed, rank, args.workers, device, augment=not args.no_augment)
        self.lab = common.import_lab("vnet")
        self.loss_fn = common.lab_attribute(self.lab, ("dice_loss",), "dice_loss function")
        self._build()

    def _describe(self) -> str:
        settings, processes = self.settings, self.rank.world_size
        backend = ("NCCL" if self.device.type == "cuda" else "Gloo") if distributed() else "no process group"
        return (f"{processes} process(es), {backend} on {self.device} | batch {settings.batch_size} per "
                f"process x {processes} x accumulate {settings.accumulate} = "
                f"{self.global_batch} per step | lr {self.lr:g}")

    @property
    def global_batch(self) -> int:
        return self.settings.batch_size * self.rank.world_size * self.settings.accumulate

    def _build(self) -> None:
        """The lab's network, Adam, the gradient scaler; the last checkpoint restored; DDP."""
        net_class = common.lab_attribute(self.lab, ("VNet",), "VNet class")
        self.net = net_class(in_channels=2, out_channels=1, n_filters=self.settings.n_filters,
                             normalization=self.settings.normalization).to(self.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        record = {"lab": "vnet", **asdict(self.settings)}
        self.resumed = restore(self.folder, self.net, self.optimizer, self.scaler, record, self.device,
                               self.args.fresh)
        if self.resumed["restored"] is not None:
            self.log.info(f"resuming {self.folder.name} after epoch {self.resumed['start_epoch'] - 1}")
        self.log.history = {key: list(values) for key, values in self.resumed["history"].items()}
        if self.rank.is_main:
            common.write_settings(self.folder, {**record, "processes": self.rank.world_size, "lr": self.lr,
                                                "lr_scaling": self.args.lr_scaling, "seed": self.profile.seed})
        self.model = _wrap(self.net, self.settings, self.device)
        self.started = time.perf_counter()

    def wall_time(self) -> float:
        """Training seconds, those of earlier sessions of this run included."""
        return self.resumed["wall_time_s"] + time.perf_counter() - self.started

    def fit(self) -> None:
        """The remaining epochs: the notebook's ``train_one_epoch`` and ``evaluate`` on this share."""
        train_one_epoch = common.lab_attribute(self.lab, ("train_one_epoch",), "train_one_epoch function")
        evaluate = common.lab_attribute(self.lab, ("evaluate",), "evaluate function")
        settings, args = self.settings, self.args
        for epoch in range(self.resumed["start_epoch"], settings.max_epochs):
            self.batches["train"].set_epoch(epoch)  # the same order everywhere; each takes its share
            train = train_one_epoch(self.model, FirstBatches(self.batches["train"], args.steps_per_epoch),
                                    self.optimizer, self.loss_fn, self.device, accumulate=settings.accumulate,
                                    scaler=self.scaler, amp=self.amp, channels_last=self.channels_last)
            validation = self._validate(evaluate)
            train, validation = mean_over_ranks(train, self.device), mean_over_ranks(validation, self.device)
            best = validation["dice"] >= max(self.log.history.get("validation_dice", []) + [float("-inf")])
            self.log.epoch(epoch, settings.max_epochs, recorded=epoch, train_loss=train["loss"],
                           validation_loss=validation["loss"], train_dice=train["dice"],
                           validation_dice=validation["dice"])
            if self.rank.is_main:
                save(self.folder, epoch, self.net, self.optimizer, self.scaler, self.log.history, settings,
                     self.wall_time(), best, seed=self.profile.seed)

    def _validate(self, evaluate) -> dict:
        """The notebook's ``evaluate`` on this process's share of the validation cases."""
        validation = self.batches["evaluation"].get("validation")
        if validation is None:
            return {"loss": float("nan"), "dice": float("nan")}
        # the plain network, not the DDP wrapper: no collective calls, so shares may differ in length
        return evaluate(self.net, FirstBatches(validation, self.args.eval_batches), self.loss_fn, self.device,
                        amp=self.amp, channels_last=self.channels_last)

    def finish(self) -> dict | None:
        """Per-case Dice of the best epoch's network on every split; rank 0 writes ``metrics.json``."""
        from labkit import runs, torch_utils

        spread = rank_weight_spread(self.net, self.device)
        barrier(self.device)  # best.pt is written
        best_epoch = _load_best(self.folder, self.net, self.device, torch_utils)
        scores = {split: gather_scores(case_scores(self.lab, self.net, FirstBatches(batches, self.args.eval_batches),
                                                   self.device, self.amp, self.channels_last))
                  for split, batches in self.batches["evaluation"].items()}
        if not self.rank.is_main:
            return None
        device = (f"{self.device.type} x{self.rank.world_size} (DistributedDataParallel)" if distributed()
                  else str(self.device))
        record = common.metrics_record(
            "vnet", self.profile, device, self.data_source, len(self.log.history.get("epoch", [])),
            self.wall_time(), scores, best_epoch=best_epoch, processes=self.rank.world_size,
            per_process_batch_size=self.settings.batch_size, global_batch_size=self.global_batch,
            lr=self.lr, lr_scaling=self.args.lr_scaling, rank_weight_spread=spread,
            history=self.log.history, settings=asdict(self.settings), seed=self.profile.seed,
            mixed_precision=self.amp)
        path = runs.write_metrics(self.folder, record)
        self.log.info(f"wrote {path} | best epoch {best_epoch} | train Dice {_shown(record['train_dice'])} | "
                      f"validation Dice {_shown(record['validation_dice'])} | test Dice {_shown(record['test_dice'])}")
        return record


def _wrap(net, settings, device):
    """The network as the training loop sees it: DDP-wrapped when there are several processes."""
    if not distributed():
        return net
    from torch.nn.parallel import DistributedDataParallel

    if settings.normalization == "batchnorm" and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # statistics over the global batch
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _load_best(folder: Path, net, device, torch_utils) -> int | None:
    """Load ``best.pt`` into ``net`` (as the notebook reports the best epoch); its epoch, or None."""
    path = Path(folder) / BEST
    if not path.is_file():
        return None
    state = torch_utils.load_checkpoint(path, map_location=device)
    net.load_state_dict(state["net"])
    return int(state["epoch"])


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    from labkit.data.errors import DataError
    from labkit.torch_utils import CheckpointError, TrainingDiverged

    args = build_parser().parse_args(argv)
    several = False
    try:
        several = common.rank_from_environment().world_size > 1
        run(args)
        status = 0
    except (TrainError, DataError, CheckpointError, TrainingDiverged) as error:
        print(f"labkit.train vnet: error: {error}", file=sys.stderr)
        status = 2
    if several:
        leave_now(status)  # see leave_now: Gloo's threads may still be releasing tensors
    return status


__all__ = ["FirstBatches", "Trainer", "build_parser", "case_scores", "gather_scores", "main", "make_batches",
           "leave_now", "mean_over_ranks", "rank_weight_spread", "restore", "run", "save", "start_processes"]
