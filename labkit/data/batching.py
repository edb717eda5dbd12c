"""Batches from a list of cases, with transforms in three stages: ``before`` (load, resample,
normalise, crop: once per case, cached on disk, in worker threads), ``each_epoch`` (reorder the
case list, e.g. ``Shuffle``) and ``each_batch`` (augment every case of every batch).

The prepared cases are kept in memory once; an epoch reorders references and a batch transform
returns new arrays. Randomness is a function of ``(seed, epoch, position)``: the order comes from
``default_rng([seed, epoch])``, each case's augmentation from ``default_rng([seed, epoch, 1,
position])``, so ``set_epoch(e)`` replays epoch ``e`` after a resume; with ``rank`` /
``world_size`` each process gets its share of the same order (padded by repeating cases).

With ``prefetch=N`` one background thread assembles the next N batches while the network trains
(numpy releases the interpreter lock), and after an epoch's last batch the next epoch's first
ones. The batches are the same, in the same order, as with ``prefetch=0``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from labkit import paths
from labkit.data.augment import Shuffle
from labkit.data.cache import CaseCache
from labkit.data.errors import DataError
from labkit.data.wrappers import Compose


class BatchIterator:
    """Iterate over batches ``{'id': [...], 'image': (B, ...), 'label': (B, ...)}``.

    Args:
        cases: case dicts (usually paths from ``list_cases`` / ``load_splits``).
        before, each_epoch, each_batch: the three stages (``each_epoch`` callables take
            ``(cases, rng)``; random ``each_batch`` transforms get an rng).
        shuffle: reorder the cases every epoch (seeded by ``seed``).
        cache: True (``labkit.paths.cache_root()``), False, or a folder.
        workers: threads preparing cases; None means ``min(4, CPU cores)``.
        rank, world_size: this process's share when training on several GPUs.
        progress: a progress bar while preparing (never when ``LABKIT_HEADLESS=1``).
        prefetch: batches a background thread assembles ahead (0: each when asked).

    Example:
        >>> it = BatchIterator(cases, batch_size=2, before=prostate.preprocessing(...))
        >>> for epoch in range(max_epochs):
        ...     it.set_epoch(epoch)
        ...     for batch in it:
        ...         image, label = batch["image"], batch["label"]
    """

    def __init__(self, cases, batch_size: int, before=(), each_epoch=(), each_batch=(),
                 shuffle: bool = True, seed: int = 0, cache=True, workers: int | None = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, progress: bool = True,
                 prefetch: int = 0):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.batch_size = int(batch_size)
        self.before = list(before)
        self.each_epoch = list(each_epoch)
        self.each_batch = Compose(each_batch)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.prefetch = max(0, int(prefetch))
        self._thread = None  # the background thread (a one-thread pool), made when first needed
        self._ahead = None  # (what, futures, jobs): the next epoch's first batches, started early
        self.cases = prepare_cases(list(cases), self.before, cache=cache, workers=workers,
                                   progress=progress)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next pass replays (its order and augmentations)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch for this rank (assuming ``each_epoch`` keeps the number of cases)."""
        per_rank = math.ceil(len(self.cases) / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def epoch_cases(self, epoch: int | None = None) -> list[dict]:
        """The prepared cases this rank visits in ``epoch``, in order (references, not copies)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        cases = Shuffle()(self.cases, rng) if self.shuffle else list(self.cases)
        for transform in self.each_epoch:
            cases = list(transform(cases, rng))
        total = math.ceil(len(cases) / self.world_size) * self.world_size
        cases = (cases * math.ceil(total / max(len(cases), 1)))[:total]  # pad by repeating
        return cases[self.rank::self.world_size]

    def __iter__(self):
        epoch = self.epoch
        jobs = self._jobs(epoch)
        yield from (self._prefetched(epoch, jobs) if self.prefetch else (self._assemble(*job) for job in jobs))
        self.epoch = epoch + 1  # a plain loop moves on; set_epoch() still decides

    def _jobs(self, epoch: int) -> list:
        """``(cases, epoch, start)`` of every batch of ``epoch``, in order."""
        cases = self.epoch_cases(epoch)
        jobs = [(cases[start:start + self.batch_size], epoch, start)
                for start in range(0, len(cases), self.batch_size)]
        if jobs and self.drop_last and len(jobs[-1][0]) < self.batch_size:
            jobs.pop()
        return jobs

    def _assemble(self, cases: list, epoch: int, start: int) -> dict:
        """One batch: the ``each_batch`` transforms on every case (each with the rng of its
        position in the epoch), then the arrays stacked. Every way of iterating calls this."""
        prepared = []
        for offset, case in enumerate(cases):
            position = (start + offset) * self.world_size + self.rank  # position in the epoch
            prepared.append(self.each_batch(case, np.random.default_rng([self.seed, epoch, 1, position])))
        batch = {"id": [case.get("id") for case in prepared]}
        for key in ("image", "label"):
            if all(key in case for case in prepared):
                batch[key] = _stack(prepared, key)
        return batch

    def _prefetched(self, epoch: int, jobs: list):
        """The batches of ``jobs``, each assembled in the background thread ``prefetch`` ahead."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="labkit-batches")
        ahead, self._ahead = self._ahead, None
        pending = deque(ahead[1] if ahead and ahead[0] == self._what(jobs) else ())
        if ahead and not pending:  # the caller asked for another epoch (set_epoch) or changed it
            for future in ahead[1]:
                future.cancel()
        submitted = len(pending)
        try:
            for index in range(len(jobs)):
                while submitted < len(jobs) and len(pending) <= self.prefetch:
                    pending.append(self._thread.submit(self._assemble, *jobs[submitted]))
                    submitted += 1
                batch = pending.popleft().result()
                if index == len(jobs) - 1:
                    # Start on the next epoch while the caller trains on this last batch,
                    # validates or saves a checkpoint; another epoch asked for drops this work.
                    self._start_ahead(epoch + 1)
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def _start_ahead(self, epoch: int) -> None:
        jobs = self._jobs(epoch)[:self.prefetch]
        futures = [self._thread.submit(self._assemble, *job) for job in jobs]
        self._ahead = (self._what(jobs), futures, jobs)  # jobs kept: their cases' ids stay unique

    def _what(self, jobs: list) -> tuple:
        """What the first batches of ``jobs`` are made of: epoch, start, which cases (by
        identity), the batch transforms and the settings that choose each case's rng."""
        return ([(epoch, start, [id(case) for case in cases]) for cases, epoch, start in jobs[:self.prefetch]],
                repr(self.each_batch), self.seed, self.rank, self.world_size)


def _stack(cases, key) -> np.ndarray:
    shapes = {np.shape(case[key]) for case in cases}
    if len(shapes) > 1:
        raise DataError(None, f"'{key}' arrays of different shapes in one batch: {sorted(shapes)} "
                        f"(cases {[c.get('id') for c in cases]})",
                        "end the `before` chain with CropOrPad / Resize to one size")
    return np.stack([np.asarray(case[key], dtype=np.float32) for case in cases])


def prepare_cases(cases: list, transforms, cache=True, workers: int | None = None,
                  progress: bool = True) -> list:
    """Run ``transforms`` on every case (in input order), reading and filling the disk cache.

    Cases missing from the cache are prepared by ``workers`` threads (None:
    :func:`default_workers`). Threads, not processes: the heavy parts (gzip, NumPy, SciPy's
    resampling) release the interpreter lock, no case is copied back through a pipe, and
    transforms defined in a notebook cell work. ``make bench`` measures the cold preparation
    against the original course's (target: 5x).
    """
    from tqdm.auto import tqdm

    if not transforms:
        return [dict(case) for case in cases]
    case_cache = None if cache is False or cache is None else CaseCache(
        paths.cache_root() if cache is True else cache, transforms)
    prepared = [case_cache.load(case) if case_cache else None for case in cases]
    missing = [i for i, case in enumerate(prepared) if case is None]
    workers = default_workers() if workers is None else max(1, int(workers))
    quiet = not progress or os.environ.get("LABKIT_HEADLESS") == "1"
    prepare = partial(_prepare, transforms=Compose(transforms), case_cache=case_cache)
    with ThreadPoolExecutor(workers, thread_name_prefix="labkit-prepare") as pool, \
            tqdm(total=len(missing), desc="preparing cases", unit="case", leave=False,
                 disable=quiet or not missing) as bar:
        for i, case in zip(missing, pool.map(prepare, [cases[i] for i in missing]), strict=True):
            prepared[i] = case
            bar.update(1)
    return prepared


def default_workers() -> int:
    """``min(4, CPU cores available to this process)``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def _prepare(case: dict, transforms, case_cache) -> dict:
    """One prepared case, stored in the disk cache if there is one."""
    prepared = transforms(case)
    if case_cache is not None:
        case_cache.save(case, prepared)
    return prepared
