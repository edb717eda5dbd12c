"""BatchIterator: three stages, seeded epochs, sharding, disk cache, worker processes."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from labkit.data import lung, prostate
from labkit.data.batching import BatchIterator, default_workers, prepare_cases
from labkit.data.cache import CaseCache
from labkit.data.prefetch import fork_available
from labkit.data.transforms import Compose, NormalizeIntensity, RandomFlip, RandomIntensity, Shuffle


def _memory_cases(n=7, shape=(1, 6, 6, 4)):
    rng = np.random.default_rng(0)
    return [{"id": f"c{i}", "image": rng.random(shape).astype(np.float32),
             "label": (rng.random(shape) > 0.5).astype(np.float32)} for i in range(n)]


def _ids(iterator):
    return [case_id for batch in iterator for case_id in batch["id"]]


def test_batches_shapes_and_length():
    it = BatchIterator(_memory_cases(7), batch_size=3, cache=False)
    batches = list(it)
    assert len(it) == 3 == len(batches)
    assert batches[0]["image"].shape == (3, 1, 6, 6, 4) and batches[-1]["image"].shape == (1, 1, 6, 6, 4)
    assert batches[0]["label"].dtype == np.float32
    assert sorted(_ids(BatchIterator(_memory_cases(7), 3, cache=False))) == [f"c{i}" for i in range(7)]
    dropped = BatchIterator(_memory_cases(7), batch_size=3, drop_last=True, cache=False)
    assert len(dropped) == 2 == len(list(dropped))


def test_epochs_differ_and_replay_after_set_epoch():
    each_batch = [RandomFlip(["image", "label"], axes=(0, 1, 2)), RandomIntensity(["image"])]
    it = BatchIterator(_memory_cases(), 2, each_batch=each_batch, seed=3, cache=False)
    epoch0 = [b["image"].copy() for b in it]
    epoch1 = [b["image"].copy() for b in it]  # a plain second loop is the next epoch
    assert it.epoch == 2
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    it.set_epoch(1)
    for replayed, original in zip(it, epoch1, strict=True):
        np.testing.assert_array_equal(replayed["image"], original)
    fresh = BatchIterator(_memory_cases(), 2, each_batch=each_batch, seed=3, cache=False)
    fresh.set_epoch(1)  # a resumed run replays epoch 1 exactly
    np.testing.assert_array_equal(next(iter(fresh))["image"], epoch1[0])


def test_no_shuffle_keeps_order_and_each_epoch_stage_runs():
    it = BatchIterator(_memory_cases(5), 2, shuffle=False, cache=False)
    assert _ids(it) == [f"c{i}" for i in range(5)]
    reverse = BatchIterator(_memory_cases(5), 2, shuffle=False, cache=False,
                            each_epoch=[lambda cases, rng: cases[::-1]])
    assert _ids(reverse) == [f"c{i}" for i in reversed(range(5))]
    shuffled = BatchIterator(_memory_cases(5), 2, shuffle=False, each_epoch=[Shuffle()], cache=False)
    assert sorted(_ids(shuffled)) == [f"c{i}" for i in range(5)]
    odd_only = BatchIterator(_memory_cases(5), 2, shuffle=False, cache=False, each_epoch=[
        lambda cases, rng: [case for case in cases if int(case["id"][1:]) % 2]])  # sees case dicts
    assert _ids(odd_only) == ["c1", "c3"]


def test_stored_cases_are_not_copied_or_changed():
    it = BatchIterator(_memory_cases(4), 2, each_batch=[RandomIntensity(["image"], (2, 2), (1, 1))],
                       cache=False)
    before = [case["image"].copy() for case in it.cases]
    stored = [id(case["image"]) for case in it.cases]
    list(it)
    list(it)
    assert [id(case["image"]) for case in it.cases] == stored
    for case, original in zip(it.cases, before, strict=True):
        np.testing.assert_array_equal(case["image"], original)


def test_ranks_share_an_epoch_without_overlap():
    cases = _memory_cases(7)
    shards = [BatchIterator(cases, 2, rank=r, world_size=3, seed=5, cache=False) for r in range(3)]
    seen = [_ids(shard) for shard in shards]
    assert all(len(s) == 3 for s in seen) and all(len(shard) == 2 for shard in shards)
    assert set(sum(seen, [])) == {c["id"] for c in cases}  # 9 slots: 7 cases + 2 repeats
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(cases, 2, rank=3, world_size=3, cache=False)


def test_augmentation_does_not_depend_on_world_size():
    cases = _memory_cases(4)
    flip = [RandomIntensity(["image"])]
    single = BatchIterator(cases, 1, each_batch=flip, seed=2, cache=False)
    by_id = {b["id"][0]: b["image"] for b in single}
    for rank in range(2):
        for batch in BatchIterator(cases, 1, each_batch=flip, seed=2, rank=rank, world_size=2, cache=False):
            np.testing.assert_array_equal(batch["image"], by_id[batch["id"][0]])


def test_different_shapes_in_a_batch_is_a_clear_error():
    cases = _memory_cases(2)
    cases[1]["image"] = np.zeros((1, 5, 5, 5), np.float32)
    with pytest.raises(ValueError, match="CropOrPad"):
        list(BatchIterator(cases, 2, cache=False))


def test_prostate_pipeline_with_cache_and_workers(tiny_prostate_root, tmp_path):
    cases = prostate.list_cases(tiny_prostate_root)[:4]
    chain = prostate.preprocessing((4.0, 4.0, 4.0), (16, 16, 12))
    serial = BatchIterator(cases, 2, before=chain, cache=tmp_path / "cache", workers=1, shuffle=False)
    entries = sorted((tmp_path / "cache").rglob("case.json"))
    assert len(entries) == 4
    assert {p.name for p in entries[0].parent.iterdir()} == {"case.json", "0-image.npy", "1-label.npy"}
    parallel = BatchIterator(cases, 2, before=chain, cache=False, workers=2, shuffle=False)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    cached = BatchIterator(cases, 2, before=chain, cache=tmp_path / "cache", workers=1, shuffle=False)
    np.testing.assert_array_equal(next(iter(cached))["image"], next(iter(serial))["image"])
    meta = cached.cases[0]["image_meta"]
    assert isinstance(meta["affine"], np.ndarray) and meta["affine"].shape == (4, 4)
    assert prostate.to_original_grid(cached.cases[0]["label"], cached.cases[0]).shape == tuple(meta["shape"])


def test_cache_invalidated_when_a_source_changes(tiny_lung_root, tmp_path):
    shutil.copytree(tiny_lung_root / "MontgomerySet", tmp_path / "MontgomerySet")
    case = lung.list_cases(tmp_path)[0]
    chain = lung.preprocessing((16, 16))
    cache = CaseCache(tmp_path / "cache", chain)
    first = prepare_cases([case], chain, cache=tmp_path / "cache")[0]
    old_path = cache.path(case)
    assert old_path.exists() and cache.load(case) is not None
    from PIL import Image

    with Image.open(case["left"]) as mask:
        size = mask.size
    Image.new("L", size, 255).save(case["left"])  # the mask changes: all lung now
    os.utime(case["left"], ns=(1, 1))
    assert cache.path(case) != old_path and cache.load(case) is None
    second = prepare_cases([case], chain, cache=tmp_path / "cache")[0]
    assert not old_path.exists()  # the stale entry is removed
    assert second["label"].sum() > first["label"].sum()


def test_cache_key_changes_with_transform_settings(tmp_path):
    one = CaseCache(tmp_path, [NormalizeIntensity("image")])
    two = CaseCache(tmp_path, [NormalizeIntensity("image", mode="minmax")])
    assert one.folder != two.folder


def test_damaged_cache_entry_is_recomputed(tiny_lung_root, tmp_path):
    case = lung.list_cases(tiny_lung_root)[1]
    chain = lung.preprocessing((16, 16))
    prepare_cases([case], chain, cache=tmp_path)
    path = CaseCache(tmp_path, chain).path(case)
    image_file = next(path.glob("*-image.npy"))
    image_file.write_bytes(image_file.read_bytes()[:100])  # truncated
    assert CaseCache(tmp_path, chain).load(case) is None
    again = prepare_cases([case], chain, cache=tmp_path)[0]
    assert again["image"].shape == (16, 16)
    assert CaseCache(tmp_path, chain).load(case)["image"].shape == (16, 16)  # repaired
    (path / "case.json").unlink()  # an entry without case.json is incomplete: written again
    prepare_cases([case], chain, cache=tmp_path)
    assert CaseCache(tmp_path, chain).load(case)["image"].shape == (16, 16)


def test_progress_bar_quiet_when_headless(tiny_lung_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    BatchIterator(lung.list_cases(tiny_lung_root)[:3], 2, before=lung.preprocessing((16, 16)),
                  cache=tmp_path, workers=1)
    captured = capsys.readouterr()
    assert "preparing" not in captured.err + captured.out


def test_default_workers_is_between_one_and_four():
    assert 1 <= default_workers() <= 4


class _DiesInWorkers:
    """A transform that kills any process but the one that made it (a worker killed for memory)."""

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, case):
        if os.getpid() != self.parent:
            os._exit(1)
        return dict(case, image=np.asarray(case["image"]) + 1)

    def __repr__(self):
        return "DiesInWorkers()"


def test_broken_worker_pool_falls_back_to_this_process():
    cases = _memory_cases(3)
    with pytest.warns(UserWarning, match="worker processes failed"):
        prepared = prepare_cases(cases, [_DiesInWorkers()], cache=False, workers=2, progress=False)
    for case, original in zip(prepared, cases, strict=True):
        np.testing.assert_array_equal(case["image"], original["image"] + 1)


def test_data_error_in_a_worker_reaches_the_caller(tiny_lung_root, tmp_path):
    from labkit.data.errors import DataError

    cases = lung.list_cases(tiny_lung_root)[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases[2] = dict(cases[2], image=str(broken))
    with pytest.raises(DataError, match="broken.png"):
        prepare_cases(cases, lung.preprocessing((16, 16)), cache=False, workers=2, progress=False)


def test_cache_key_covers_in_memory_arrays(tmp_path):
    cases = _memory_cases(1)
    chain = [NormalizeIntensity("image", mode="minmax", per_channel=False)]
    first = prepare_cases(cases, chain, cache=tmp_path, progress=False)[0]
    changed = [dict(cases[0], image=cases[0]["image"] * 0 + np.arange(4, dtype=np.float32))]
    second = prepare_cases(changed, chain, cache=tmp_path, progress=False)[0]
    assert not np.array_equal(first["image"], second["image"])
    assert len(list(tmp_path.rglob("case.json"))) == 1  # the stale entry of c0 was replaced


class _Counted:
    """A batch transform that counts its calls (adds 1 to the image)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, case):
        self.calls += 1
        return dict(case, image=case["image"] + 1)

    def __repr__(self):
        return "Counted()"


def _images(iterator, stop_after=None):
    images = []
    for batch in iterator:
        images.append(batch["image"].copy())
        if stop_after is not None and len(images) == stop_after:
            break
    return images


PREFETCH_WAYS = ["thread", pytest.param("process", marks=pytest.mark.skipif(
    not fork_available(), reason="a worker process is forked on Linux only"))]
needs_fork = pytest.mark.skipif(not fork_available(), reason="a worker process is forked on Linux only")


@pytest.mark.parametrize("way", PREFETCH_WAYS)
def test_prefetching_changes_no_batch(way):
    """Background assembly gives the very batches of plain, in-order assembly: whole epochs,
    an epoch left early, a jump with set_epoch (a resume), drop_last and sharding."""
    each_batch = [RandomFlip(["image", "label"], axes=(0, 1, 2)), RandomIntensity(["image"])]
    options = [dict(), dict(drop_last=True), dict(rank=1, world_size=2)]
    for extra in options:
        plain, ahead = (BatchIterator(_memory_cases(), 2, each_batch=each_batch, seed=5, cache=False,
                                      prefetch=prefetch, prefetch_in=way, **extra) for prefetch in (0, 3))
        for it in (plain, ahead):
            it.record = [_images(it), _images(it, stop_after=1), _images(it)]
            it.set_epoch(7)
            it.record.append(_images(it))
            it.set_epoch(2)  # back to an epoch already seen: replayed
            it.record.append(_images(it))
        for one, other in zip(plain.record, ahead.record, strict=True):
            assert len(one) == len(other) > 0
            for a, b in zip(one, other, strict=True):
                np.testing.assert_array_equal(a, b)
        ahead.close()


def test_thread_prefetching_reuses_the_next_epochs_first_batches():
    counted = _Counted()
    it = BatchIterator(_memory_cases(6), 2, each_batch=[counted], cache=False, prefetch=2,
                       prefetch_in="thread")
    list(it)
    list(it)
    it._ahead[1][-1][1].result()  # the speculative work on epoch 2 has finished
    # 2 epochs x 6 cases, plus epoch 2's first 2 batches (4 cases), assembled once each
    assert counted.calls == 12 + 4
    list(it)  # epoch 2 takes those 2 batches as they are and assembles its third
    it._ahead[1][-1][1].result()
    assert counted.calls == 12 + 4 + 2 + 4  # ... then starts on epoch 3


@pytest.mark.parametrize("way", PREFETCH_WAYS)
def test_prefetching_drops_the_next_epoch_when_another_is_asked(way):
    it = BatchIterator(_memory_cases(6), 2, each_batch=[RandomIntensity(["image"])], seed=1,
                       cache=False, prefetch=2, prefetch_in=way)
    list(it)
    it.set_epoch(5)
    jumped = _images(it)
    fresh = BatchIterator(_memory_cases(6), 2, each_batch=[RandomIntensity(["image"])], seed=1,
                          cache=False, prefetch=0)
    fresh.set_epoch(5)
    for a, b in zip(jumped, _images(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("way", PREFETCH_WAYS)
def test_an_error_in_a_prefetched_batch_reaches_the_loop_at_that_batch(way):
    from labkit.data.errors import DataError

    def fails_on_c3(case):
        if case["id"] == "c3":
            raise DataError("c3.nii.gz", "broken on purpose", "nothing")
        return case

    it = BatchIterator(_memory_cases(6), 1, each_batch=[fails_on_c3], shuffle=False, cache=False,
                       prefetch=3, prefetch_in=way)
    seen = []
    with pytest.raises(DataError, match="c3.nii.gz: broken on purpose"):
        for batch in it:
            seen += batch["id"]
    assert seen == ["c0", "c1", "c2"]
    it.set_epoch(0)  # the loop goes on after the error: the same error at the same batch
    with pytest.raises(DataError) as error:
        list(it)
    if way == "process":  # the worker's traceback comes along: the line that failed
        assert "fails_on_c3" in "".join(getattr(error.value, "__notes__", []))
    it.close()


# ---- prefetching in a worker process (Linux) ----


class _Grow:
    """A batch transform that doubles the image's last axis (the batch outgrows its slot)."""

    def __call__(self, case):
        return dict(case, image=np.concatenate([case["image"], case["image"]], axis=-1))

    def __repr__(self):
        return "Grow()"


class _Warns:
    def __call__(self, case):
        warnings.warn(f"odd case {case['id']}", UserWarning, stacklevel=2)
        return case

    def __repr__(self):
        return "Warns()"


class _Unpicklable(Exception):
    def __init__(self, message, extra):  # pickling calls __init__(message) only: fails
        super().__init__(message)
        self.extra = extra


def _fails_unpicklably(case):
    raise _Unpicklable("cannot travel", extra=1)


def _reference(cases, each_batch, epochs, **options):
    plain = BatchIterator(cases, 2, each_batch=each_batch, seed=2, cache=False, **options)
    return [[batch["image"].copy() for batch in plain] for _ in range(epochs)]


def _assert_same(epochs, other):
    assert [len(epoch) for epoch in epochs] == [len(epoch) for epoch in other]
    for one, two in zip(epochs, other, strict=True):
        for a, b in zip(one, two, strict=True):
            np.testing.assert_array_equal(a, b)


@needs_fork
def test_process_prefetching_is_the_default_on_linux_and_ends_with_close():
    it = BatchIterator(_memory_cases(), 2, cache=False, prefetch=2)
    assert it.prefetch_in == "process"
    assert BatchIterator(_memory_cases(), 2, cache=False, prefetch=2, prefetch_in="thread").prefetch_in == "thread"
    list(it)
    process = it._worker._process
    assert process.is_alive() and process.pid != os.getpid()
    it.close()
    assert not process.is_alive()
    list(it)  # a closed iterator starts a new worker when asked for another epoch
    again = it._worker._process
    assert again.is_alive() and again.pid != process.pid
    del it
    import gc

    gc.collect()
    again.join(timeout=5)
    assert not again.is_alive()  # garbage collection of the iterator ends its worker


def test_prefetch_in_is_checked():
    with pytest.raises(ValueError, match="prefetch_in"):
        BatchIterator(_memory_cases(), 2, cache=False, prefetch=2, prefetch_in="gpu")


@needs_fork
def test_process_prefetching_honours_changed_transforms_and_settings():
    cases = _memory_cases(6)
    first = [RandomIntensity(["image"])]
    second = [RandomFlip(["image", "label"], axes=(0, 1, 2))]
    it = BatchIterator(cases, 2, each_batch=first, seed=2, cache=False, prefetch=2)
    seen = [[b["image"].copy() for b in it]]  # epoch 0; the worker goes on to epoch 1
    it.each_batch = Compose([RandomFlip(["image", "label"], axes=(0, 1, 2))])  # changed: honoured
    seen.append([b["image"].copy() for b in it])
    it.each_batch.transforms[0].axes = (1,)  # changed in place: honoured too
    seen.append([b["image"].copy() for b in it])
    it.shuffle = False  # a setting the worker was forked with: a new worker
    seen.append([b["image"].copy() for b in it])
    expected = []
    for epoch, (each_batch, shuffle) in enumerate([(first, True), (second, True),
                                                   ([RandomFlip(["image", "label"], axes=(1,))], True),
                                                   ([RandomFlip(["image", "label"], axes=(1,))], False)]):
        plain = BatchIterator(cases, 2, each_batch=each_batch, seed=2, cache=False, shuffle=shuffle)
        plain.set_epoch(epoch)
        expected.append([b["image"].copy() for b in plain])
    _assert_same(seen, expected)
    it.close()


@needs_fork
def test_process_prefetching_handles_what_does_not_fit_or_pickle():
    cases = _memory_cases(5)
    # A batch larger than the slot made for it goes through the pipe.
    grown = BatchIterator(cases, 2, each_batch=[_Grow()], seed=2, cache=False, prefetch=2)
    _assert_same([[b["image"] for b in grown] for _ in range(2)], _reference(cases, [_Grow()], 2))
    assert next(iter(grown))["image"].shape == (2, 1, 6, 6, 8)
    grown.close()
    # Transforms that cannot be pickled (a lambda) run as the worker was forked with them.
    lam = [lambda case: dict(case, image=case["image"] * 2)]
    lambdas = BatchIterator(cases, 2, each_batch=lam, seed=2, cache=False, prefetch=2)
    _assert_same([[b["image"] for b in lambdas] for _ in range(2)], _reference(cases, lam, 2))
    lambdas.close()
    # An each_epoch transform that makes new case dicts, and an epoch with no cases at all.
    copies = [lambda cases, rng: [dict(case) for case in cases[:3]]]
    made = BatchIterator(cases, 2, each_epoch=copies, seed=2, cache=False, prefetch=2)
    assert [len(b["id"]) for b in made] == [2, 1]
    empty = BatchIterator(cases, 2, each_epoch=[lambda cases, rng: []], cache=False, prefetch=2)
    assert list(empty) == [] and list(empty) == []
    made.close()
    empty.close()


@needs_fork
def test_process_prefetching_passes_warnings_and_unpicklable_errors_on():
    it = BatchIterator(_memory_cases(2), 1, each_batch=[_Warns()], shuffle=False, cache=False, prefetch=2)
    with pytest.warns(UserWarning, match="odd case c0"):
        next(iter(it))
    it.close()
    failing = BatchIterator(_memory_cases(2), 1, each_batch=[_fails_unpicklably], cache=False, prefetch=2)
    with pytest.raises(RuntimeError, match="(?s)worker process.*cannot travel"):
        list(failing)
    failing.close()


@needs_fork
def test_a_killed_worker_is_replaced_by_assembly_in_this_process():
    import signal

    each_batch = [RandomIntensity(["image"])]
    cases = _memory_cases(8)
    it = BatchIterator(cases, 2, each_batch=each_batch, seed=2, cache=False, prefetch=2)
    seen = [[], []]
    batches = iter(it)
    seen[0].append(next(batches)["image"])
    os.kill(it._worker._process.pid, signal.SIGKILL)
    with pytest.warns(RuntimeWarning, match="assembling the batches in this process"):
        seen[0] += [batch["image"] for batch in batches]
    seen[1] = [batch["image"] for batch in it]  # and later epochs too
    _assert_same(seen, _reference(cases, each_batch, 2))


@needs_fork
def test_the_worker_ends_with_the_process_that_forked_it(tmp_path):
    import subprocess
    import sys
    import time

    script = ("import os, numpy as np\n"
              "from labkit.data.batching import BatchIterator\n"
              "cases = [{'id': str(i), 'image': np.zeros((1, 4, 4, 2), np.float32)} for i in range(4)]\n"
              "it = BatchIterator(cases, 1, cache=False, prefetch=2)\n"
              "next(iter(it))\n"
              "print(it._worker._process.pid, flush=True)\n"
              "os._exit(0)\n")  # no clean-up at all, as a killed kernel
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_worker_memory_setting_runs_in_a_fresh_process():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from labkit.data.batching import _keep_freed_memory as k; k(); k()"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
