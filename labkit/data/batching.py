"""Batches from a list of cases, with transforms in three stages.

================  =========================================  ==============================
stage             what                                       when
================  =========================================  ==============================
``before``        load, resample, normalise, crop            once (cached on disk, parallel)
``each_epoch``    reorder the case list (``Shuffle``)        at the start of every epoch
``each_batch``    augment (``RandomFlip``, ...)              for every case in every batch
================  =========================================  ==============================

The prepared cases are kept in memory once; an epoch only reorders references, and a batch
transform returns new arrays without touching the stored case (no deep copy of the data set).

Randomness is a function of ``(seed, epoch, position)``: the epoch's order comes from
``np.random.default_rng([seed, epoch])`` and each case's augmentation from
``np.random.default_rng([seed, epoch, 1, position])``. After a resume, ``set_epoch(e)``
replays epoch ``e`` exactly; with ``rank`` / ``world_size`` each process gets its own share of
the same order (padded by repeating cases so every rank has as many batches).

With ``prefetch=N`` the next N batches are assembled while the network trains on one, and
after an epoch's last batch the next epoch's first ones. On Linux a forked worker process does
it and hands the batches over through shared memory (``labkit.data.prefetch``): it has a core
and an interpreter of its own, so it helps even a training loop that runs on the CPU. Elsewhere
(macOS, Windows) a background thread does it, which helps when a GPU trains (numpy and scipy
release the interpreter lock while they work). The batches do not depend on this: they are the
same, in the same order, with ``prefetch=0``.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from labkit.data import prefetch as process_prefetch
from labkit.data.cache import CaseCache
from labkit.data.errors import DataError
from labkit.data.transforms import Compose, Shuffle


class BatchIterator:
    """Iterate over batches ``{'id': [...], 'image': (B, ...), 'label': (B, ...)}``.

    Args:
        cases: case dicts (usually paths from ``list_cases`` / ``load_splits``).
        batch_size: cases per batch.
        before: transforms run once per case, results cached on disk.
        each_epoch: callables ``(cases, rng) -> cases`` run at the start of each epoch.
        each_batch: transforms run on every case of every batch (random ones get an rng).
        shuffle: reorder the cases every epoch (seeded).
        seed: base seed of every random draw.
        cache: True (``labkit.paths.cache_root()``), False, or a folder.
        workers: processes preparing cases; None means ``min(4, CPU cores)``.
        drop_last: drop the last, smaller batch.
        rank, world_size: this process's share when training on several GPUs.
        progress: show a progress bar while preparing (never when ``LABKIT_HEADLESS=1``).
        prefetch: batches assembled ahead while the network trains; 0 (the default) assembles
            each batch when asked.
        prefetch_in: ``"process"`` (a forked worker process: Linux only), ``"thread"`` (a
            background thread: worth it when a GPU trains; on a CPU-only machine it competes
            with the training for the interpreter and the cores, measured in ``benchmarks/``,
            data section) or ``"auto"`` (the default: a process where one can be forked, else a
            thread). The process gets a copy of the prepared cases when the first epoch starts
            and the current ``each_batch`` transforms at every epoch; transforms that cannot be
            pickled (a lambda) stay as they were when it started. ``close()`` ends it (so does
            garbage collection of the iterator).

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
                 prefetch: int = 0, prefetch_in: str = "auto"):
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
        if prefetch_in not in ("auto", "process", "thread"):
            raise ValueError(f"prefetch_in must be 'auto', 'process' or 'thread', got {prefetch_in!r}")
        if prefetch_in == "process" and not process_prefetch.fork_available():
            raise ValueError("prefetch_in='process' needs a platform where a worker can be forked "
                             "(Linux); use 'thread' or 'auto' here")
        self.prefetch_in = ("process" if process_prefetch.fork_available() else "thread") \
            if prefetch_in == "auto" else prefetch_in
        self._ahead = None  # thread: (epoch, [(chunk, future), ...]): the next epoch's first batches
        self._worker = None  # process: the ProcessPrefetcher, started by the first epoch
        self._worker_settings = None  # process: what it was forked with
        self._expect = None  # process: (epoch, token, transforms) it is working on unasked
        self.cases = prepare_cases(list(cases), self.before, cache=cache, workers=workers,
                                   progress=progress)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next pass replays (its order and augmentations)."""
        self.epoch = int(epoch)

    def _cases_per_rank(self) -> int:
        return math.ceil(len(self.cases) / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank (assuming ``each_epoch`` keeps the number of cases)."""
        per_rank = self._cases_per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def epoch_cases(self, epoch: int | None = None) -> list[dict]:
        """The prepared cases this rank visits in ``epoch``, in order (references, not copies)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        cases = list(self.cases)
        if self.shuffle:
            cases = Shuffle()(cases, rng)
        for transform in self.each_epoch:
            cases = list(transform(cases, rng))
        total = math.ceil(len(cases) / self.world_size) * self.world_size
        cases = (cases * math.ceil(total / max(len(cases), 1)))[:total]  # pad by repeating
        return cases[self.rank::self.world_size]

    def _chunks(self, epoch: int) -> list:
        """(cases, start) of every batch of ``epoch``, in order."""
        cases = self.epoch_cases(epoch)
        chunks = [(cases[start:start + self.batch_size], start) for start in range(0, len(cases), self.batch_size)]
        if chunks and self.drop_last and len(chunks[-1][0]) < self.batch_size:
            chunks.pop()
        return chunks

    def __iter__(self):
        epoch = self.epoch
        if self.prefetch and self.prefetch_in == "process":
            yield from self._iter_in_process(epoch)
            return
        chunks = self._chunks(epoch)
        if self.prefetch == 0:
            for chunk, start in chunks:
                yield self._batch(chunk, epoch, start)
            self.epoch = epoch + 1  # a plain loop moves on; set_epoch() still decides
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="labkit-batches")
        pending = deque(self._claim_ahead(epoch, chunks))
        submitted = len(pending)
        try:
            for index in range(len(chunks)):
                while submitted < len(chunks) and len(pending) < self.prefetch + 1:
                    chunk, start = chunks[submitted]
                    pending.append(pool.submit(self._batch, chunk, epoch, start))
                    submitted += 1
                batch = pending.popleft().result()
                if index == len(chunks) - 1:
                    # Start on the next epoch while the caller trains on this last batch,
                    # validates or saves a checkpoint. If the caller then asks for another epoch
                    # (set_epoch), this work is dropped.
                    ahead = self._chunks(epoch + 1)[:self.prefetch]
                    self._ahead = (epoch + 1, [(chunk, pool.submit(self._batch, chunk, epoch + 1, start))
                                               for chunk, start in ahead])
                yield batch
            self.epoch = epoch + 1
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False)  # the thread ends once its submitted work is done

    def _claim_ahead(self, epoch: int, chunks: list) -> list:
        """Futures of this epoch's first batches started by the previous pass, if they match."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return []
        ahead_epoch, started = ahead
        if ahead_epoch == epoch and _same_chunks([chunk for chunk, _ in started], chunks):
            return [future for _, future in started]
        for _, future in started:
            future.cancel()
        return []

    def _iter_in_process(self, epoch: int):
        """Batches from the worker process, which runs on into the next epoch by itself."""
        worker, token, transforms = self._worker_for(epoch)
        index, count = 0, None
        while count is None or index < count:
            try:
                batch, count = worker.get(token, epoch, index)
            except process_prefetch.WorkerGone as gone:
                warnings.warn(f"{gone}; assembling the batches in this process from here on "
                              "(later epochs in a background thread)", RuntimeWarning, stacklevel=3)
                self._worker, self._expect, self.prefetch_in = None, None, "thread"
                for chunk, start in self._chunks(epoch)[index:]:
                    yield self._batch(chunk, epoch, start)
                break
            if index == count - 1:
                # The worker carries on into the next epoch while the caller trains on this
                # batch, validates or saves a checkpoint; set_epoch() elsewhere drops that work.
                self._expect = (epoch + 1, token, transforms)
            if count:
                yield batch
            index += 1
        self.epoch = epoch + 1

    def _worker_for(self, epoch: int):
        """The worker process, started (again) if the settings changed; the token under which
        it delivers ``epoch`` (a new instruction unless it is already on it); the transforms it
        uses, pickled."""
        transforms = _pickled(self.each_batch)
        settings = (tuple(map(id, self.cases)), tuple(map(id, self.each_epoch)), self.shuffle,
                    self.seed, self.batch_size, self.drop_last, self.rank, self.world_size,
                    self.prefetch, None if transforms is not None else id(self.each_batch))
        worker = self._worker
        if worker is None or not worker.alive or self._worker_settings != settings:
            if worker is not None:
                worker.close()
            slot = sum(process_prefetch.aligned(self.batch_size * _float32_bytes(self.cases, key))
                       for key in ("image", "label"))
            self._worker = worker = process_prefetch.ProcessPrefetcher(self, slot, self.prefetch)
            self._worker_settings, self._expect = settings, None
        expect, self._expect = self._expect, None
        if expect is not None and expect[0] == epoch and expect[2] == transforms:
            return worker, expect[1], transforms
        return worker, worker.start(epoch, transforms), transforms

    def close(self) -> None:
        """End the worker process (``prefetch_in='process'``); the next epoch starts a new one."""
        if self._worker is not None:
            self._worker.close()
        self._worker, self._expect = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ahead"] = None  # futures and the worker process stay with this process
        state["_worker"] = state["_expect"] = state["_worker_settings"] = None
        return state

    def _batch(self, chunk, epoch: int, start: int) -> dict:
        return _assemble(chunk, epoch, start, self.each_batch, self.seed, self.rank, self.world_size)


def _assemble(chunk, epoch: int, start: int, each_batch, seed: int, rank: int, world_size: int) -> dict:
    """One batch: the ``each_batch`` transforms on every case, then the arrays stacked.

    Every way of iterating (in turn, thread, worker process) calls this, so they agree.
    """
    prepared = []
    for offset, case in enumerate(chunk):
        position = (start + offset) * world_size + rank  # position in the epoch
        rng = np.random.default_rng([seed, epoch, 1, position])
        prepared.append(each_batch(case, rng))
    batch = {"id": [case.get("id") for case in prepared]}
    for key in ("image", "label"):
        if all(key in case for case in prepared):
            batch[key] = _stack(prepared, key)
    return batch


def _pickled(transforms) -> bytes | None:
    """The transforms as the worker process receives them; None when they cannot be pickled."""
    try:
        return pickle.dumps(transforms, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a lambda, a local function ...
        return None


def _same_chunks(these: list, chunks: list) -> bool:
    """Whether ``these`` (lists of cases) are the first batches of ``chunks``, case for case."""
    wanted = [chunk for chunk, _ in chunks[:len(these)]]
    return len(wanted) == len(these) and all(
        len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs, strict=True))
        for mine, theirs in zip(these, wanted, strict=True))


def _float32_bytes(cases: list, key: str) -> int:
    """Bytes of the largest ``key`` array among the cases, as float32 (what a batch holds)."""
    sizes = [np.size(case[key]) for case in cases if key in case]
    return 4 * int(max(sizes, default=0))


def _stack(cases, key) -> np.ndarray:
    shapes = {np.shape(case[key]) for case in cases}
    if len(shapes) > 1:
        raise DataError(None, f"'{key}' arrays of different shapes in one batch: {sorted(shapes)} "
                        f"(cases {[c.get('id') for c in cases]})",
                        "end the `before` chain with CropOrPad / Resize to one size")
    return np.stack([np.asarray(case[key], dtype=np.float32) for case in cases])


# ----------------------------------------------------------------------------------------------
# Preparing cases: cache, process pool, progress bar
# ----------------------------------------------------------------------------------------------


def prepare_cases(cases: list, transforms, cache=True, workers: int | None = None,
                  progress: bool = True) -> list:
    """Run ``transforms`` on every case, reading and filling the disk cache.

    Returns:
        The prepared cases, in the input order.
    """
    if not transforms:
        return [dict(case) for case in cases]
    case_cache = _case_cache(cache, transforms)
    prepared = [case_cache.load(case) if case_cache else None for case in cases]
    missing = [i for i, case in enumerate(prepared) if case is None]
    workers = default_workers() if workers is None else max(1, int(workers))
    jobs = [(cases[i], transforms, case_cache) for i in missing]
    bar = _progress_bar(len(missing), progress)
    try:
        for job, i, case in zip(jobs, missing, _run(jobs, workers, bar), strict=True):
            if case is None:
                # A worker hands a cached case back through the disk cache: reading the file is
                # several times cheaper than pickling a large volume through a pipe. (If the
                # cache could not be written, prepare the case here.)
                case = case_cache.load(cases[i]) or _prepare_one(job)
            prepared[i] = case
    finally:
        if bar is not None:
            bar.close()
    return prepared


LARGE_CASE_BYTES = 32 * 2**20  # above this, an uncached case is prepared in this process


def default_workers() -> int:
    """``min(4, CPU cores available to this process)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _case_cache(cache, transforms):
    if cache is False or cache is None:
        return None
    from labkit.paths import cache_root

    return CaseCache(cache_root() if cache is True else cache, transforms)


def _prepare_one(job, in_worker: bool = False) -> dict | None:
    case, transforms, case_cache = job
    prepared = Compose(transforms)(case)
    if case_cache is not None:
        case_cache.save(case, prepared)
        if in_worker:
            return None  # the parent reads it from the cache
    return prepared


def _prepare_in_worker(job) -> dict | None:
    return _prepare_one(job, in_worker=True)


def _run(jobs, workers: int, bar):
    """Prepared cases in job order, in a process pool when it pays off.

    If the pool breaks (a worker killed for memory, a script without the ``__main__`` guard
    under ``spawn``), the remaining cases are prepared in this process instead.
    """
    done = 0
    if workers > 1 and len(jobs) > 1 and jobs[0][2] is None:
        # Without a disk cache, results come back pickled through a pipe: for large volumes
        # (the seed's 256x256x96 at 1 mm) that costs more than a second core saves.
        first = _prepare_one(jobs[0])
        done = 1
        _advance(bar)
        yield first
        if sum(value.nbytes for value in first.values() if isinstance(value, np.ndarray)) > LARGE_CASE_BYTES:
            workers = 1
    if workers > 1 and len(jobs) - done > 1 and _picklable([t for job in jobs[:1] for t in job[1]]):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        context = multiprocessing.get_context(_start_method())
        try:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                     initializer=_keep_freed_memory) as pool:
                for case in pool.map(_prepare_in_worker, jobs[done:]):
                    done += 1
                    _advance(bar)
                    yield case
            return
        except (BrokenProcessPool, RuntimeError) as error:
            warnings.warn(f"worker processes failed ({type(error).__name__}); preparing the "
                          "remaining cases in this process", stacklevel=4)
    for job in jobs[done:]:
        case = _prepare_one(job)
        _advance(bar)
        yield case


def _keep_freed_memory() -> None:
    """In a worker process: let glibc keep freed memory for the next case.

    Preparing a case allocates and frees tens of MB in large blocks. By default glibc hands each
    large block back to the system when it is freed and the next case faults fresh pages in
    again (about 13 % of a case's time at the cpu profile, measured). Workers are short-lived,
    so keeping the memory costs nothing afterwards. Other C libraries: nothing to do.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 256 * 2**20)
    mallopt(m_trim_threshold, 1024 * 2**20)


def _start_method() -> str:
    """``fork`` on Linux (what PyTorch's DataLoader uses; workers touch only numpy / scipy /
    nibabel, never a framework), ``spawn`` elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _picklable(transforms) -> bool:
    try:
        pickle.dumps(transforms)
        if _start_method() == "spawn" and any(type(t).__module__ == "__main__" for t in transforms):
            raise TypeError("a fresh worker process cannot import classes defined in __main__")
    except Exception:  # a transform defined in a notebook cell, a lambda ...
        warnings.warn("these transforms cannot be sent to worker processes; preparing cases "
                      "in this process (define transforms in a module to use several cores)",
                      stacklevel=4)
        return False
    return True


def _progress_bar(total: int, progress: bool):
    if not progress or total == 0 or os.environ.get("LABKIT_HEADLESS") == "1":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="preparing cases", unit="case", leave=False)


def _advance(bar) -> None:
    if bar is not None:
        bar.update(1)
