"""Lab 1 (V-Net, PyTorch) on several GPUs or machines with DistributedDataParallel.

``torchrun --nproc_per_node=N -m labkit.train vnet --profile gpu [--run-name NAME]``
(``python -m labkit.train vnet ...``: one process, on one GPU or the CPU).

Every process builds the same network from the same seed; DDP averages the gradients in each
backward pass (NCCL between GPUs, Gloo between CPU processes). Network, loss, augmentation and
loops are the notebook's (``labkit.labs.vnet``); each process's ``BatchIterator`` takes its share
of every epoch's seeded order, as ``DistributedSampler`` does. Rank 0 writes the run folder
(:class:`labkit.runs.Run`): with several machines put ``LABKIT_RUNS`` on a shared filesystem.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

from labkit.train import common
from labkit.train.common import Rank, TrainError

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 may prepare the data meanwhile


def start_processes(rank: Rank, prefer_device: str | None = None) -> torch.device:
    """This process's device; with several processes, join the group (sharing a CPU's cores out)."""
    from labkit import torch_utils

    if rank.world_size == 1:
        device = torch_utils.pick_device(prefer_device)
        if device.type == "cpu":
            torch_utils.cpu_threads()
        return device
    if torch.cuda.is_available() and prefer_device in (None, "cuda"):
        device = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT, device_id=device)
        return device
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", rank.world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_processes)))
    dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return torch.device("cpu")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier(device: torch.device) -> None:
    """Wait for every process (nothing to wait for with one)."""
    if distributed():
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def leave_now(status: int) -> None:
    """End a process of a multi-process run with ``status`` once its output is flushed (as
    ``multiprocessing`` ends its children): Gloo's threads could abort a finalising interpreter."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def mean_over_ranks(values: dict, device: torch.device) -> dict:
    """Each number averaged over the processes (every process gets the same numbers)."""
    keys = sorted(key for key, value in values.items() if isinstance(value, float))
    if not distributed():
        return {key: values[key] for key in keys}
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / dist.get_world_size()).tolist(), strict=True))


def gather_scores(scores: dict) -> dict:
    """Every process's ``{case id: dice}`` merged (cases repeated as padding count once)."""
    if not distributed():
        return dict(scores)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, scores)
    return {case: value for part in parts for case, value in part.items()}


def rank_weight_spread(net: torch.nn.Module, device: torch.device) -> float:
    """The largest difference between any process's weights and rank 0's (0.0 when in sync)."""
    if not distributed():
        return 0.0
    with torch.no_grad():
        flat = torch.cat([parameter.detach().reshape(-1).float() for parameter in net.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def make_batches(lab, profile, rank: Rank, device, augment: bool = True) -> tuple[dict, str]:
    """This process's share of the training cases and of every split for evaluation; the first
    process of each machine prepares (and caches) the cases before the others read them."""
    from labkit import paths
    from labkit.data import prostate
    from labkit.data.batching import BatchIterator

    settings = profile.vnet
    splits = profile.limit(prostate.load_splits(), "vnet")
    chain = prostate.preprocessing(spacing=settings.spacing, size=settings.image_size, labels="whole")
    shard = dict(rank=rank.rank, world_size=rank.world_size, progress=False)
    prefetch = 2 if device.type == "cuda" else 0  # as the notebook: on a CPU it competes for the cores
    made = {}
    for turn in (True, False):
        if (rank.local_rank == 0) == turn:
            made["train"] = BatchIterator(splits["train"], settings.batch_size, before=chain,
                                          each_batch=lab.augmentation if augment else [],
                                          seed=profile.seed, prefetch=prefetch, **shard)
            made["evaluation"] = {name: BatchIterator(cases, settings.batch_size, before=chain,
                                                      shuffle=False, **shard)
                                  for name, cases in splits.items() if cases}
        barrier(device)
    return made, paths.data_source(prostate.dataset_dir())


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


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say on this process; returns the metrics record."""
    from labkit import torch_utils
    from labkit.runs import Run

    changes = {} if args.normalization is None else {"normalization": args.normalization}
    profile = common.settings_from_arguments(args, "vnet", **changes)
    settings, rank = profile.vnet, common.rank_from_environment()
    device = start_processes(rank, args.device)
    try:
        lab = common.import_lab("vnet")
        torch_utils.seed_everything(profile.seed)  # the same first weights in every process
        mixed, channels_last = settings.mixed_precision and device.type == "cuda", device.type == "cuda"
        lr = common.scaled_lr(settings.lr, rank.world_size, args.lr_scaling)
        batches, data_source = make_batches(lab, profile, rank, device, not args.no_augment)
        net = lab.VNet(2, 1, settings.base_filters, settings.normalization).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        scaler = torch.amp.GradScaler(device.type, enabled=mixed)
        record = {**asdict(settings), "seed": profile.seed, "processes": rank.world_size, "lr": lr,
                  "lr_scaling": args.lr_scaling, "augment": not args.no_augment}
        run = Run("vnet", profile.name, args.run_name or "ddp", record,
                  torch_utils.Checkpoint(net, optimizer=optimizer, scaler=scaler),
                  resume=not args.fresh, is_main=rank.is_main)
        model = _wrap(net, settings, device)
        global_batch = settings.batch_size * rank.world_size * settings.accumulate
        if rank.is_main:
            print(f"[labkit.train] {rank.world_size} process(es) on {device} | global batch "
                  f"{global_batch} | lr {lr:g}", flush=True)
        for epoch in run.epochs(settings.max_epochs):
            batches["train"].set_epoch(epoch)  # the same order everywhere; each takes its share
            train = lab.train_one_epoch(model, batches["train"],
                                        optimizer, lab.dice_loss, device, accumulate=settings.accumulate,
                                        scaler=scaler, mixed_precision=mixed, channels_last=channels_last)
            # the plain network: no collective calls, so the shares may differ in length
            validation = lab.evaluate(net, batches["evaluation"]["validation"],
                                      lab.dice_loss, device, mixed_precision=mixed, channels_last=channels_last)
            train, validation = mean_over_ranks(train, device), mean_over_ranks(validation, device)
            run.end_epoch(train_loss=train["loss"], validation_loss=validation["loss"],
                          train_dice=train["dice"], validation_dice=validation["dice"])
            if rank.is_main:
                print(f"[labkit.train] epoch {epoch + 1}/{settings.max_epochs} train Dice "
                      f"{train['dice']:.4f} validation Dice {validation['dice']:.4f}", flush=True)
        spread = rank_weight_spread(net, device)
        barrier(device)  # best.pt is written
        run.load_best()
        scores = {split: gather_scores(lab.evaluate(net, split_batches, lab.dice_loss, device, mixed,
                                                    channels_last)["cases"])
                  for split, split_batches in batches["evaluation"].items()}
        result = run.finish(device=(f"{device.type} x{rank.world_size} (DistributedDataParallel)"
                                    if distributed() else str(device)),
                            data_source=data_source, test_dice=common.mean_or_none(scores.get("test", {})),
                            per_case=common.per_case_rows(scores), global_batch_size=global_batch,
                            rank_weight_spread=spread,
                            peak_gpu_memory_mb=torch_utils.peak_memory_mb(device))
        if rank.is_main:
            common.say_finished(run, result)
        return result
    finally:
        if distributed():
            dist.destroy_process_group()


def _wrap(net, settings, device):
    """The network as the training loop sees it: DDP-wrapped when there are several processes."""
    if not distributed():
        return net
    from torch.nn.parallel import DistributedDataParallel

    if settings.normalization == "batchnorm" and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # statistics over the global batch
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    from labkit.data.errors import DataError
    from labkit.runs import CheckpointError, SettingsChanged, TrainingDiverged

    args = build_parser().parse_args(argv)
    several = False
    try:
        several = common.rank_from_environment().world_size > 1
        run(args)
        status = 0
    except (TrainError, DataError, CheckpointError, SettingsChanged, TrainingDiverged) as error:
        print(f"labkit.train vnet: error: {error}", file=sys.stderr)
        status = 2
    if several:
        leave_now(status)  # see leave_now: Gloo's threads may still be releasing tensors
    return status
