"""BatchIterator: three stages, seeded epochs, sharding, disk cache, worker threads, prefetching."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from labkit.data import lung, prostate
from labkit.data.batching import BatchIterator, default_workers, prepare_cases
from labkit.data.cache import CaseCache
from labkit.data.transforms import NormalizeIntensity, RandomFlip, RandomIntensity, Shuffle


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


def test_transforms_defined_in_a_notebook_cell_are_prepared_by_several_threads():
    """A local class or a lambda (what a student writes in a cell) needs no pickling."""
    threads = set()

    class AddOne:
        def __call__(self, case):
            threads.add(threading.get_ident())
            time.sleep(0.01)  # long enough for the second thread to take a case
            return dict(case, image=np.asarray(case["image"]) + 1)

    cases = _memory_cases(6)
    prepared = prepare_cases(cases, [AddOne(), lambda case: dict(case, seen=True)], cache=False,
                             workers=2, progress=False)
    for case, original in zip(prepared, cases, strict=True):
        np.testing.assert_array_equal(case["image"], original["image"] + 1)
        assert case["seen"] and case["id"] == original["id"]
    assert len(threads) == 2


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


def _wait_for(counted, calls):
    """Wait (at most 10 s) until the background thread has made ``calls`` calls."""
    deadline = time.monotonic() + 10
    while counted.calls < calls and time.monotonic() < deadline:
        time.sleep(0.01)


def test_prefetching_changes_no_batch():
    """Background assembly gives the very batches of plain, in-order assembly: whole epochs,
    an epoch left early, a jump with set_epoch (a resume), drop_last and sharding."""
    each_batch = [RandomFlip(["image", "label"], axes=(0, 1, 2)), RandomIntensity(["image"])]
    options = [dict(), dict(drop_last=True), dict(rank=1, world_size=2)]
    for extra in options:
        plain, ahead = (BatchIterator(_memory_cases(), 2, each_batch=each_batch, seed=5, cache=False,
                                      prefetch=prefetch, **extra) for prefetch in (0, 3))
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


def test_prefetching_assembles_each_batch_once_and_starts_the_next_epoch_early():
    counted = _Counted()
    it = BatchIterator(_memory_cases(6), 2, each_batch=[counted], cache=False, prefetch=2)
    list(it)
    list(it)
    # 2 epochs x 6 cases, plus epoch 2's first 2 batches (4 cases), assembled once each
    _wait_for(counted, 12 + 4)
    assert counted.calls == 12 + 4
    list(it)  # epoch 2 takes those 2 batches as they are and assembles its third ...
    _wait_for(counted, 12 + 4 + 2 + 4)
    assert counted.calls == 12 + 4 + 2 + 4  # ... then starts on epoch 3


def test_prefetching_honours_changed_batch_transforms():
    cases = _memory_cases(6)
    it = BatchIterator(cases, 2, each_batch=[RandomIntensity(["image"])], seed=2, cache=False, prefetch=2)
    list(it)  # epoch 1's first batches are now assembled ahead, with these transforms
    it.each_batch.transforms[0] = RandomFlip(["image", "label"], axes=(0, 1, 2))
    changed = _images(it)
    plain = BatchIterator(cases, 2, each_batch=[RandomFlip(["image", "label"], axes=(0, 1, 2))], seed=2,
                          cache=False)
    plain.set_epoch(1)
    for a, b in zip(changed, _images(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_prefetching_drops_the_next_epoch_when_another_is_asked():
    it = BatchIterator(_memory_cases(6), 2, each_batch=[RandomIntensity(["image"])], seed=1,
                       cache=False, prefetch=2)
    list(it)
    it.set_epoch(5)
    jumped = _images(it)
    fresh = BatchIterator(_memory_cases(6), 2, each_batch=[RandomIntensity(["image"])], seed=1,
                          cache=False, prefetch=0)
    fresh.set_epoch(5)
    for a, b in zip(jumped, _images(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_error_in_a_prefetched_batch_reaches_the_loop_at_that_batch():
    from labkit.data.errors import DataError

    def fails_on_c3(case):
        if case["id"] == "c3":
            raise DataError("c3.nii.gz", "broken on purpose", "nothing")
        return case

    it = BatchIterator(_memory_cases(6), 1, each_batch=[fails_on_c3], shuffle=False, cache=False,
                       prefetch=3)
    seen = []
    with pytest.raises(DataError, match="c3.nii.gz: broken on purpose"):
        for batch in it:
            seen += batch["id"]
    assert seen == ["c0", "c1", "c2"]
    it.set_epoch(0)  # the loop goes on after the error: the same error at the same batch
    with pytest.raises(DataError, match="c3.nii.gz: broken on purpose"):
        list(it)


def test_an_epoch_without_cases_is_empty_with_or_without_prefetching():
    for prefetch in (0, 2):
        empty = BatchIterator(_memory_cases(5), 2, each_epoch=[lambda cases, rng: []], cache=False,
                              prefetch=prefetch)
        assert list(empty) == [] and list(empty) == []
