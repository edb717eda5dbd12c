"""Batches assembled ahead in a forked worker process, handed over through shared memory.

``BatchIterator(..., prefetch=N)`` uses this on Linux. A background *thread* cannot help a
training loop that runs on the CPU: the augmentations' Python needs the interpreter lock the
training loop's Python holds, and on two cores the thread slows the epoch down (measured in
``benchmarks/``, data section). A *process* has its own interpreter and, since the lab trains
on all cores but one, a core of its own.

How batches travel:

- The worker is forked from the iterator, so it holds the prepared cases without a copy (the
  pages are shared until someone writes to them), the ``each_epoch`` transforms and the
  settings. It never touches PyTorch or TensorFlow.
- The parent tells it which epoch to start and sends the ``each_batch`` transforms, pickled, so a
  change to them between epochs is honoured. From there the worker makes the epoch's batches in
  order, with the very function ``prefetch=0`` uses (so the very same batches), and carries on
  into the next epoch: a training loop that asks for epoch after epoch never waits for a plan.
- Batches go into a ring of ``slots`` regions of one shared anonymous mapping, each with a small
  header (which epoch, which batch, where the arrays lie). Two semaphores count the ready and
  the free regions, so when a batch is ready, taking it costs no system call; the parent copies
  the arrays out (a batch it owns, which a student may keep) and frees the region. A batch that
  does not fit (a transform that changes the shape) and errors are pickled through a pipe.
- Anything the parent did not ask for (an epoch left early, an epoch other than the one
  ``set_epoch`` chose) is skipped by its header.

Warnings raised in the worker are shown in the parent; an exception reaches the training loop
at the batch it belongs to, with its own type and the worker's traceback as a note. If the
worker dies (killed for memory, say) the parent warns and assembles the rest itself. When the
parent's end of the pipe closes, the worker ends, so it never outlives the process that forked it.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
import warnings
import weakref
from collections import deque

import numpy as np

SILENT_WORKER_S = 300.0  # no batch from a working worker for this long: assume it is stuck
HEADER_BYTES = 16384  # per slot: the fields below, then the pickled (ids, layout, warnings)
FIELDS = 6  # token, epoch, index, batches in the epoch, kind, length of the pickled part
ARRAYS, PIPED, ERROR, EMPTY = 0, 1, 2, 3  # kinds of entry


def fork_available() -> bool:
    """Whether batches can be assembled in a forked process here (Linux: yes; macOS, where
    system libraries are not safe across ``fork``, and Windows: no)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to 64: every array in a slot starts 64-byte aligned."""
    return -(-int(nbytes) // 64) * 64


class WorkerGone(RuntimeError):
    """The worker process ended or stopped answering; the caller assembles batches itself."""


class ProcessPrefetcher:
    """One forked worker making batches for one iterator (see the module docstring).

    Args:
        iterator: the ``BatchIterator``; the worker works on its copy of it as it is now.
        slot_bytes: room for one batch's arrays (larger batches go through the pipe).
        slots: batches the worker may have ready at once.
    """

    def __init__(self, iterator, slot_bytes: int, slots: int):
        self.slots = max(1, int(slots))
        self.stride = HEADER_BYTES + aligned(max(1, int(slot_bytes)))
        self._shared = mmap.mmap(-1, self.slots * self.stride)  # MAP_SHARED: seen by the child
        context = multiprocessing.get_context("fork")
        self._ready, self._free = context.Semaphore(0), context.Semaphore(self.slots)
        self._conn, child_end = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_worker_main, name="labkit-batches", daemon=True,
            args=(iterator, child_end, self._conn, os.getpid(), self._shared, self.slots, self.stride,
                  self._ready, self._free))
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (a Jupyter kernel, PyTorch):
            # the child only runs numpy code and the interpreter, whose locks fork re-creates.
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            self._process.start()
        child_end.close()
        self._headers = [np.frombuffer(self._shared, np.int64, FIELDS, slot * self.stride)
                         for slot in range(self.slots)]
        self._seq = 0  # entries taken so far (the ring position)
        self._token = 0
        self._finalizer = weakref.finalize(self, _stop, self._conn, self._process)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self._process.is_alive()

    def start(self, epoch: int, transforms: bytes | None) -> int:
        """Have the worker start on ``epoch`` (``transforms``: the pickled ``each_batch``, None to
        keep the ones it was forked with); returns the token its entries will carry."""
        self._token += 1
        try:
            self._conn.send(("epoch", self._token, int(epoch), transforms))
        except (OSError, ValueError) as error:
            self.close()
            raise WorkerGone(f"the batch worker process is gone ({error})") from None
        return self._token

    def get(self, token: int, epoch: int, index: int):
        """``(batch, batches in the epoch)`` for batch ``index`` of ``epoch`` under ``token``;
        ``(None, 0)`` for an empty epoch. Entries from before are skipped."""
        while True:
            self._wait_ready()
            slot = self._seq % self.slots
            self._seq += 1
            their_token, their_epoch, their_index, count, kind, length = (int(v) for v in self._headers[slot])
            wanted = (their_token, their_epoch, their_index) == (token, epoch, index)
            meta = None
            try:
                if wanted and length:
                    base = slot * self.stride
                    meta = pickle.loads(self._shared[base + 8 * FIELDS: base + 8 * FIELDS + length])
                    if kind == ARRAYS:
                        batch = self._copy_out(base + HEADER_BYTES, *meta[:2])
            finally:
                self._free.release()
            if kind in (PIPED, ERROR):
                payload = self._receive_piped()
                batch = payload if kind == PIPED else None
            if not wanted:
                if their_token == token and their_epoch == epoch and their_index > index:
                    self.close()  # out of step: cannot happen; be safe rather than wait forever
                    raise WorkerGone(f"the batch worker sent batch {their_index} for {index}")
                continue
            if kind == ERROR:
                raise _rebuilt(payload)
            if kind == EMPTY:
                return None, 0
            for text, category, filename, lineno in (meta[2] if meta else ()):
                warnings.warn_explicit(text, category, filename, lineno)
            return batch, count

    def _copy_out(self, offset: int, ids, layout) -> dict:
        """The slot's arrays as arrays the caller owns (the slot is reused afterwards)."""
        batch = {"id": ids}
        for key, shape, dtype, start in layout:
            count = int(np.prod(shape, dtype=np.int64))
            batch[key] = np.frombuffer(self._shared, dtype=dtype, count=count,
                                       offset=offset + start).reshape(shape).copy()
        return batch

    def _wait_ready(self) -> None:
        waited = 0.0
        while not self._ready.acquire(timeout=1.0):
            waited += 1.0
            if not self._process.is_alive():
                self.close()
                raise WorkerGone(f"the batch worker process ended (exit code {self._process.exitcode})")
            if waited >= SILENT_WORKER_S:
                self.close()
                raise WorkerGone(f"the batch worker process sent no batch for {SILENT_WORKER_S:.0f} s")

    def _receive_piped(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError, ValueError) as error:
            self.close()
            raise WorkerGone(f"the batch worker process stopped ({error or 'pipe closed'})") from None

    def close(self) -> None:
        self._finalizer()


def _stop(conn, process) -> None:
    """End the worker: ask, then insist. Also runs when the prefetcher is garbage-collected."""
    try:
        conn.send(("stop",))
    except (OSError, ValueError):
        pass
    conn.close()
    process.join(timeout=2)
    if process.is_alive():
        process.terminate()
        process.join(timeout=2)


def _rebuilt(error_info):
    """The worker's exception, as itself when it survived pickling, else as a RuntimeError;
    the worker's traceback (the line of the transform that failed) comes along as a note."""
    error, text = error_info
    if not isinstance(error, BaseException):
        return RuntimeError(f"assembling a batch failed in the worker process:\n{text}")
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note("raised in the batch worker process (prefetch); its traceback:\n" + text)
    return error


# ---- the worker process ----------------------------------------------------------------------


class _Stop(Exception):
    """The parent asked the worker to end, or is gone."""


def _worker_main(iterator, conn, parent_end, parent_pid: int, shared, slots: int, stride: int,
                 ready, free) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_end.close()  # this process's copy: with it open, the parent's end would never close
    worker = _Worker(iterator, conn, parent_pid, shared, slots, stride, ready, free)
    try:
        worker.run()
    except _Stop:
        pass


class _Worker:
    """The worker's side: follow the parent's instructions, fill the ring, epoch after epoch."""

    def __init__(self, iterator, conn, parent_pid, shared, slots, stride, ready, free):
        from labkit.data.batching import _assemble

        self.iterator, self.conn, self.parent_pid, self.shared = iterator, conn, parent_pid, shared
        self.slots, self.stride, self.ready, self.free = slots, stride, ready, free
        self.assemble = _assemble
        self.token, self.epoch, self.transforms, self.pickled = None, 0, iterator.each_batch, None
        self.plan: deque = deque()  # (index, count, chunk, start) still to make in self.epoch
        self.seq = 0

    def run(self) -> None:
        while True:
            self.read_messages(block=self.token is None)
            if self.token is None:
                continue  # nothing to do until the parent says which epoch
            if not self.plan:
                self.next_epoch()
                continue
            if not self.take_slot():
                continue  # a new instruction came while waiting for room
            index, count, chunk, start = self.plan.popleft()
            self.make(index, count, chunk, start)

    def read_messages(self, block: bool) -> bool:
        """Handle what the parent sent; True if the plan changed."""
        changed = False
        try:
            while block or self.conn.poll():
                message = self.conn.recv()
                block = False
                if message[0] == "stop":
                    raise _Stop
                _, self.token, epoch, pickled = message
                if pickled is not None and pickled != self.pickled:
                    self.transforms, self.pickled = pickle.loads(pickled), pickled
                self.epoch, self.plan, changed = epoch - 1, deque(), True
        except (EOFError, OSError):
            raise _Stop from None  # the parent is gone
        return changed

    def next_epoch(self) -> None:
        """Plan the next epoch (the one asked for, after an instruction)."""
        self.epoch += 1
        try:
            chunks = self.iterator._chunks(self.epoch)
        except BaseException as error:  # noqa: BLE001 - an each_epoch transform failed
            if self.take_slot():
                self.report_error(0, error)
            return
        if not chunks:
            if self.take_slot():
                self.publish(0, 0, EMPTY, b"")
            return
        self.plan = deque((index, len(chunks), chunk, start) for index, (chunk, start) in enumerate(chunks))

    def take_slot(self) -> bool:
        """Wait for a free slot; False (and no slot taken) if the parent changed the plan meanwhile."""
        while not self.free.acquire(timeout=0.1):
            if self.read_messages(block=False):
                return False
            if os.getppid() != self.parent_pid:
                raise _Stop  # the parent is gone (its pipe may still be open in a sibling)
        if self.read_messages(block=False):
            self.free.release()
            return False
        return True

    def make(self, index: int, count: int, chunk, start: int) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                batch = self.assemble(chunk, self.epoch, start, self.transforms, self.iterator.seed,
                                      self.iterator.rank, self.iterator.world_size)
            except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
                self.report_error(index, error)
                return
        records = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
        arrays = [(key, value) for key, value in batch.items() if isinstance(value, np.ndarray)]
        fits = (sum(aligned(value.nbytes) for _, value in arrays) <= self.stride - HEADER_BYTES
                and all(key == "id" or isinstance(value, np.ndarray) for key, value in batch.items()))
        if fits:
            base, offset, layout = self.slot_offset() + HEADER_BYTES, 0, []
            for key, value in arrays:
                target = np.frombuffer(self.shared, dtype=value.dtype, count=value.size, offset=base + offset)
                np.copyto(target.reshape(value.shape), value)
                layout.append((key, value.shape, value.dtype.str, offset))
                offset += aligned(value.nbytes)
            meta = pickle.dumps((batch.get("id"), layout, records), protocol=pickle.HIGHEST_PROTOCOL)
            if len(meta) <= HEADER_BYTES - 8 * FIELDS:
                self.publish(index, count, ARRAYS, meta)
                return
        self.publish(index, count, PIPED, b"")
        self.send(batch)

    def report_error(self, index: int, error: BaseException) -> None:
        """An error entry (the slot is taken); the parent raises it at that batch."""
        self.plan = deque()
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            pickle.loads(pickle.dumps(error))
            payload = (error, text)
        except Exception:
            payload = (None, text)
        self.publish(index, 0, ERROR, b"")
        self.send(payload)
        self.token = None  # wait for the parent's next instruction

    def slot_offset(self) -> int:
        return (self.seq % self.slots) * self.stride

    def publish(self, index: int, count: int, kind: int, meta: bytes) -> None:
        base = self.slot_offset()
        header = np.frombuffer(self.shared, np.int64, FIELDS, base)
        header[:] = (self.token, self.epoch, index, count, kind, len(meta))
        self.shared[base + 8 * FIELDS: base + 8 * FIELDS + len(meta)] = meta
        self.seq += 1
        self.ready.release()  # before a piped payload: the parent reads the pipe after this

    def send(self, payload) -> None:
        try:
            self.conn.send(payload)
        except (EOFError, OSError):
            raise _Stop from None
