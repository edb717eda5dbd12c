"""Data: the seed's preparation path vs labkit cold vs labkit cached, geometry, epoch overhead.

For each setting (the cpu profile's spacing and size, and the seed's 1 mm / 256x256x96), four
ways of preparing the synthetic prostate set run side by side, interleaved:

- ``seed``: nibabel + nilearn ``resample_img`` ('continuous' = cubic image, nearest label),
  min-max, crop; the seed's iterator (thread pool, deep copies) in this process;
- ``labkit_cold``: ``BatchIterator(before=prostate.preprocessing(...), cache=False)`` with its
  default worker threads;
- ``labkit_cold_1_worker``: the same on one thread (a like-for-like single-core figure);
- ``labkit_cached``: the same chain reading the disk cache filled beforehand.

Then one epoch pass of each iterator without a network (the seed deep-copies its data set
every epoch), the geometry agreement of the two final crops (label Dice, image difference, on
flipped and oblique affines too), and the iterator's share of a smoke-profile training epoch.

    .venv/bin/python benchmarks/bench_data.py --result /tmp/data.json --config '{"repeats": 2}'
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import compare, log, ratio, section_main, speed_target

COLD_TARGET, CACHED_TARGET, OVERHEAD_TARGET, DICE_TARGET = 5.0, 20.0, 0.02, 0.99
EPOCHS_PER_SAMPLE = 10


def settings_for(config: dict) -> list[dict]:
    """The (name, spacing, size, cases) settings to measure."""
    from labkit.profiles import get_profile

    if config.get("quick"):
        return [{"name": "quick", "spacing": (6.0, 6.0, 6.0), "size": (16, 16, 8), "max_cases": 3}]
    cpu = get_profile("cpu").vnet
    return [
        {"name": "cpu profile", "spacing": tuple(cpu.spacing), "size": tuple(cpu.image_size),
         "max_cases": config.get("cpu_cases")},
        {"name": "seed (1 mm, 256x256x96)", "spacing": (1.0, 1.0, 1.0), "size": (256, 256, 96),
         "max_cases": config.get("seed_cases", 16)},
    ]


def run(config: dict) -> dict:
    from labkit.data import prostate

    repeats = int(config.get("repeats", 3))
    cases = prostate.list_cases(config.get("data_root"))
    result = {"dataset": {"cases": len(cases), "source": _data_source(config)}, "settings": [],
              "targets": []}
    for setting in settings_for(config):
        chosen = cases[: setting["max_cases"]] if setting["max_cases"] else cases
        log(f"data: {setting['name']}, {len(chosen)} cases")
        measured = measure_setting(chosen, setting, repeats)
        measured["geometry"] = geometry_agreement(chosen[: int(config.get("geometry_cases", 8))],
                                                  setting)
        result["settings"].append(measured)
        result["targets"] += _setting_targets(measured)
    log("data: epoch overhead")
    result["epoch_overhead"] = epoch_overhead(cases, config, repeats)
    overhead = result["epoch_overhead"].get("overhead_fraction")
    result["targets"].append({"name": "iterator overhead per smoke epoch",
                              "target": f"< {OVERHEAD_TARGET:.0%}", "measured": overhead,
                              "unit": "fraction",
                              "met": None if overhead is None else overhead < OVERHEAD_TARGET})
    return result


def _data_source(config) -> str:
    from labkit import paths

    root = Path(config["data_root"]) if config.get("data_root") else None
    return paths.data_source(paths.prostate_dir(root))


# ----------------------------------------------------------------------------------------------
# Preparation speed and memory
# ----------------------------------------------------------------------------------------------


def measure_setting(cases: list, setting: dict, repeats: int) -> dict:
    """Seed vs labkit (cold, cold one worker, cached) at one setting, interleaved."""
    import nilearn.image  # noqa: F401 - imported up front, as the seed notebook did; not timed
    from seed_reference import SeedBatchIterator

    from labkit.data import BatchIterator, prostate

    spacing, size = setting["spacing"], setting["size"]
    chain = prostate.preprocessing(spacing=spacing, size=size)
    kept = {}

    def keep(name, factory):
        kept[name] = factory()

    def release(variant):  # untimed: drop the previous data set of this kind before measuring
        kept.pop("seed" if variant == "seed" else "labkit", None)

    with tempfile.TemporaryDirectory(prefix="labkit-bench-cache-") as cache_dir:
        start = time.perf_counter()
        BatchIterator(cases, 2, before=chain, cache=cache_dir, progress=False)  # fill the cache
        fill_s = time.perf_counter() - start
        variants = {
            "seed": lambda: keep("seed", lambda: SeedBatchIterator(cases, 2, spacing, size)),
            "labkit_cold": lambda: keep("labkit", lambda: BatchIterator(
                cases, 2, before=chain, cache=False, progress=False)),
            "labkit_cold_1_worker": lambda: keep("labkit", lambda: BatchIterator(
                cases, 2, before=chain, cache=False, workers=1, progress=False)),
            "labkit_cached": lambda: keep("labkit", lambda: BatchIterator(
                cases, 2, before=chain, cache=cache_dir, progress=False)),
        }
        timings = compare(variants, repeats, warmup=0, before=release)
    timings["labkit_cold_and_cache_write"] = {"min_s": fill_s, "median_s": fill_s,
                                              "times_s": [round(fill_s, 6)]}
    seed = timings["seed"]
    return {
        "name": setting["name"], "spacing_mm": list(spacing), "size": list(size),
        "cases": len(cases), "repeats": repeats, "timings": timings,
        "per_case_median_s": {name: t["median_s"] / len(cases) for name, t in timings.items()},
        "speedup_vs_seed": {name: ratio(seed, t) for name, t in timings.items() if name != "seed"},
        "prepared_dataset_mb": {"seed": _megabytes(kept["seed"].data),
                                "labkit": _megabytes(kept["labkit"].cases)},
        "epoch_pass": epoch_pass(kept["seed"], kept["labkit"], repeats),
    }


def _megabytes(cases) -> float:
    """Array bytes held by a prepared data set."""
    total = 0
    for case in cases:
        for value in case.values():
            for item in value if isinstance(value, list) else [value]:
                total += item.nbytes if isinstance(item, np.ndarray) else 0
    return round(total / 2**20, 1)


def epoch_pass(seed_iterator, labkit_iterator, repeats: int) -> dict:
    """One pass over every batch, no network: the seed deep-copies its data set each time."""
    def drain(iterator):
        return lambda: sum(1 for _ in iterator)

    timings = compare({"seed": drain(seed_iterator), "labkit": drain(labkit_iterator)},
                      repeats=max(repeats, 3), warmup=1)
    return {"timings": timings, "speedup": ratio(timings["seed"], timings["labkit"])}


def _setting_targets(measured: dict) -> list[dict]:
    dice_min = measured["geometry"].get("label_dice_min")
    name = measured["name"]
    timings = measured["timings"]
    return [
        speed_target(f"prepare, labkit cold vs seed ({name})", timings["seed"],
                     timings["labkit_cold"], COLD_TARGET),
        speed_target(f"prepare, labkit cached vs seed ({name})", timings["seed"],
                     timings["labkit_cached"], CACHED_TARGET),
        {"name": f"label Dice, labkit vs seed crop ({name})", "target": f">= {DICE_TARGET}",
         "measured": dice_min, "unit": "Dice",
         "met": None if dice_min is None else dice_min >= DICE_TARGET},
    ]


# ----------------------------------------------------------------------------------------------
# Geometry agreement
# ----------------------------------------------------------------------------------------------


def geometry_agreement(cases: list, setting: dict) -> dict:
    """Seed crop vs labkit crop of the same cases: label Dice and image difference.

    Compared on the un-normalised intensities (the seed scaled by min-max, labkit by z-score,
    which is a choice, not geometry). When the two crops sit on different grids, the seed's is
    resampled onto labkit's first (nearest for labels, linear for images). A copy of the first
    case with an oblique affine (10 degrees about z) is compared as well.
    """
    spacing, size = setting["spacing"], setting["size"]
    with tempfile.TemporaryDirectory(prefix="labkit-bench-oblique-") as folder:
        checked = list(cases) + ([oblique_copy(cases[0], Path(folder))] if cases else [])
        rows = [_compare_case(case, spacing, size) for case in checked]
        exact = [dict(linear_matches_nilearn(case, spacing), id=case["id"]) for case in cases]
    dice_values = [row["label_dice"] for row in rows]
    return {
        "cases": rows,
        "label_dice_min": min(dice_values) if dice_values else None,
        "label_dice_mean": float(np.mean(dice_values)) if dice_values else None,
        "image_relative_difference_mean": float(np.mean([r["image_relative_difference"] for r in rows]))
        if rows else None,
        "image_correlation_min": min(r["image_correlation"] for r in rows) if rows else None,
        "orientations": sorted({row["orientation"] for row in rows}),
        "labkit_linear_vs_nilearn_linear": _summarize_linear(exact),
    }


def _summarize_linear(rows: list[dict]) -> dict:
    same = [row for row in rows if row.get("same_grid")]
    return {"cases": rows, "same_grid": len(same) == len(rows),
            "max_relative": max((row["max_relative"] for row in same), default=None),
            "fraction_differing_max": max((row["fraction_differing"] for row in same), default=None),
            "differences_only_on_faces": all(row["only_on_faces"] for row in same)}


def _compare_case(case: dict, spacing, size) -> dict:
    import nibabel as nib
    from seed_reference import seed_prepare_case

    from labkit.data.transforms import Compose
    from labkit.metrics import dice

    seed = seed_prepare_case(case, spacing, size, keep_geometry=True)
    ours = Compose(geometry_chain(spacing, size))(case)
    ours_affine = ours["image_meta"]["grid_affine"]
    seed_label, seed_image = seed["labels"][0][0], seed["raw_image"]
    same_grid = bool(np.allclose(seed["affine"], ours_affine, atol=1e-3))
    if not same_grid:
        seed_label = _onto_grid(seed_label, seed["affine"], ours_affine, order=0)
        seed_image = np.stack([_onto_grid(c, seed["affine"], ours_affine, 1) for c in seed_image])
    our_image = ours["image"]
    source_affine = nib.load(case["image"]).affine
    return {
        "id": case["id"], "same_grid": same_grid,
        "orientation": "".join(nib.aff2axcodes(source_affine)) + (" oblique" if _oblique(source_affine) else ""),
        "label_dice": round(dice(seed_label, ours["label"][0]), 5),
        "image_relative_difference": round(_relative_difference(seed_image, our_image), 5),
        "image_correlation": round(float(np.corrcoef(seed_image.ravel(), our_image.ravel())[0, 1]), 5),
    }


def geometry_chain(spacing, size) -> list:
    """labkit's prostate chain without the intensity normalisation."""
    from labkit.data import prostate
    from labkit.data.transforms import NormalizeIntensity

    return [t for t in prostate.preprocessing(spacing=spacing, size=size)
            if not isinstance(t, NormalizeIntensity)]


def _onto_grid(volume, source_affine, target_affine, order: int) -> np.ndarray:
    from scipy import ndimage

    matrix = np.linalg.inv(source_affine) @ target_affine
    return ndimage.affine_transform(volume, matrix[:3, :3], offset=matrix[:3, 3],
                                    output_shape=volume.shape, order=order, cval=0.0)


def _relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """mean |a - b| / mean |a| over voxels where either is non-zero."""
    inside = (reference != 0) | (other != 0)
    if not inside.any():
        return 0.0
    return float(np.abs(reference - other)[inside].mean() / max(np.abs(reference[inside]).mean(), 1e-12))


def _oblique(affine) -> bool:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.abs(np.abs(directions) - np.round(np.abs(directions))).max() > 1e-3)


def oblique_copy(case: dict, folder: Path, degrees: float = 10.0) -> dict:
    """The same voxels under an affine rotated by ``degrees`` about the z axis."""
    import nibabel as nib

    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    copied = {"id": f"{case['id']}_oblique"}
    for key in ("image", "label"):
        source = nib.load(case[key])
        path = folder / f"{key}_{Path(case[key]).name}"
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj), rotation @ source.affine), str(path))
        copied[key] = str(path)
    return copied


def linear_matches_nilearn(case: dict, spacing) -> dict:
    """labkit's linear resampling vs nilearn's 'linear' on the same grid (the file's own axes:
    nilearn does not reorient): the largest difference relative to the image's largest value,
    the share of voxels differing by more than 0.1 % of it, and whether every such voxel lies
    on the grid's outer faces (where the two treat samples just outside the scan differently)."""
    from seed_reference import seed_resample

    from labkit.data.transforms import LoadNifti, resample

    loaded = LoadNifti(["image"])(case)
    theirs = np.moveaxis(np.asarray(seed_resample(case["image"], spacing, "linear").dataobj), -1, 0)
    ours, _ = resample(loaded["image"], loaded["image_meta"]["affine"], spacing, order=1)
    if ours.shape != theirs.shape:
        return {"same_grid": False}
    scale = max(float(np.abs(theirs).max()), 1e-12)
    differing = np.abs(ours - theirs) > 1e-3 * scale
    interior = np.zeros_like(differing)
    interior[:, 1:-1, 1:-1, 1:-1] = True
    return {"same_grid": True, "max_relative": float(np.abs(ours - theirs).max() / scale),
            "fraction_differing": float(differing.mean()),
            "only_on_faces": bool(not (differing & interior).any())}


# ----------------------------------------------------------------------------------------------
# Iterator overhead against a smoke epoch
# ----------------------------------------------------------------------------------------------


def epoch_overhead(cases: list, config: dict, repeats: int) -> dict:
    """What the iterator adds to a smoke-profile training epoch (the notebook's augmentation
    on, PyTorch on the notebook's thread count), three ways side by side.

    ``training_epoch``: the training loop over the iterator as the notebook runs it
    (``prefetch=2``: a background thread assembles the next two batches while the network
    trains), with the time the loop waits for each batch clocked inside it: that wait, as a
    share of the epoch, is the overhead judged against the target (everything but the network,
    measured where it happens). ``training_epoch_in_turn`` (``prefetch=0``: each batch
    assembled when asked) is clocked the same way, and so is ``training_epoch_ndimage_affine``:
    the notebook's way with the in-plane affine augmentation sampled by
    ``ndimage.affine_transform`` instead of labkit's ``affine_in_plane`` (same values; this is
    what shows whether that fast path earns its keep). ``training_epoch_premade``: the same loop
    over the same batches assembled beforehand, so only the network's work is left; the paired
    difference (real - premade, repeat by repeat, median) is reported beside each as a
    cross-check that catches costs the wait misses (caches the iterator evicts, the thread
    competing for the cores). A smoke epoch is a tenth of a second and this machine is shared,
    so a difference of two epochs moves by several percent from run to run; the clocked wait
    does not. Each timed unit runs ``EPOCHS_PER_SAMPLE`` epochs. The iterator's own work
    without a network is reported beside it.
    """
    import torch

    from labkit import torch_utils
    from labkit.data import BatchIterator, prostate
    from labkit.labs.vnet import augmentation
    from labkit.profiles import get_profile

    threads = torch_utils.cpu_threads()  # the notebook's thread policy
    settings = get_profile("smoke").vnet
    chosen = cases[: settings.max_cases] if settings.max_cases else cases
    epochs = 2 if config.get("quick") else EPOCHS_PER_SAMPLE

    def iterator(prefetch, each_batch=None):
        with tempfile.TemporaryDirectory(prefix="labkit-bench-cache-") as cache_dir:
            return BatchIterator(chosen, settings.batch_size,
                                 before=prostate.preprocessing(settings.spacing, settings.image_size),
                                 each_batch=each_batch or augmentation, cache=cache_dir,
                                 progress=False, prefetch=prefetch)

    with_ndimage = _with_ndimage_affine(augmentation)
    iterators = {"training_epoch": iterator(2),  # as the notebook: 2 ahead, in a thread
                 "training_epoch_in_turn": iterator(0),  # each batch made when asked
                 "training_epoch_ndimage_affine": iterator(2, with_ndimage)}
    net, net_source = _smoke_net(settings)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)

    def step(batch):
        image, label = torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss = _dice_loss(torch.sigmoid(net(image)), label)
        loss.backward()
        optimizer.step()

    waits = {name: [] for name in iterators}  # seconds the loop waited for batches, per timed unit

    def training_over(name):
        def train():
            waited = 0.0
            for _ in range(epochs):
                batches = iter(iterators[name])
                while True:
                    asked = time.perf_counter()
                    batch = next(batches, None)
                    waited += time.perf_counter() - asked
                    if batch is None:
                        break
                    step(batch)
            waits[name].append(waited)
        return train

    in_turn = iterators["training_epoch_in_turn"]
    premade = [list(in_turn) for _ in range(epochs)]  # assembled once, untimed

    def training_epochs_premade():
        for batches in premade:
            for batch in batches:
                step(batch)

    def iterator_only():
        for _ in range(epochs):
            for _batch in in_turn:
                pass

    variants = {name: training_over(name) for name in iterators}
    variants.update({"training_epoch_premade": training_epochs_premade,
                     "iterator_work_no_network": iterator_only})
    timings = compare(variants, repeats=3 if config.get("quick") else max(repeats, 15), warmup=1,
                      memory=False)
    network = timings["training_epoch_premade"]
    ways = {}
    for name in iterators:
        times = timings[name]["times_s"]
        share = [w / t for w, t in zip(waits[name][-len(times):], times, strict=True)]
        paired = [(r - p) / r for r, p in zip(times, network["times_s"], strict=True)]
        ways[name] = {"wait_fraction_median": round(float(np.median(share)), 5),
                      "wait_fraction_max": round(float(np.max(share)), 5),
                      "paired_difference_fraction_median": round(float(np.median(paired)), 5),
                      "paired_difference_fraction_quartiles":
                          [round(float(q), 5) for q in np.percentile(paired, [25, 75])]}
    judged = ways["training_epoch"]
    return {"cases": len(chosen), "batches": len(in_turn), "epochs_per_sample": epochs,
            "torch_threads": threads, "net": net_source, "size": list(settings.image_size),
            "notebook_setting": "prefetch=2, a background thread",
            "timings": timings, "ways": ways,
            # judged: the share of the epoch the loop spends waiting for its batches, as the
            # notebook iterates (median)
            "overhead_fraction": judged["wait_fraction_median"],
            "overhead_fraction_max": judged["wait_fraction_max"],
            "paired_difference_fraction_median": judged["paired_difference_fraction_median"],
            "paired_difference_fraction_quartiles": judged["paired_difference_fraction_quartiles"],
            "iterator_work_fraction": round(timings["iterator_work_no_network"]["median_s"]
                                            / timings["training_epoch_in_turn"]["median_s"], 5)}


def _with_ndimage_affine(transforms: list) -> list:
    """``transforms`` with each ``RandomAffine`` drawing the same parameters but sampling through
    ``ndimage.affine_transform``, channel by channel (the plain scipy way)."""
    from scipy import ndimage

    from labkit.data.augment import Affine, RandomAffine

    class NdimageAffine(Affine):
        def __call__(self, case):
            case, matrix = dict(case), self.matrix()
            for key, order in zip(self.keys, self.orders, strict=True):
                array = np.asarray(case[key], dtype=np.float32)
                if self.degrees != 0.0 or self.scale != 1.0:
                    centre = (np.array(array.shape[-3:]) - 1) / 2
                    array = np.stack([ndimage.affine_transform(channel, matrix, centre - matrix @ centre,
                                                               order=order, cval=0.0) for channel in array])
                case[key] = array
            return case

    class NdimageRandomAffine(RandomAffine):
        def draw(self, rng):
            drawn = super().draw(rng)
            return NdimageAffine(drawn.keys, drawn.orders, drawn.degrees, drawn.scale, drawn.spatial_dims)

    return [NdimageRandomAffine(t.keys, t.orders, t.degrees, t.scale, t.probability, t.spatial_dims)
            if isinstance(t, RandomAffine) else t for t in transforms]


def _smoke_net(settings):
    from labkit.labs.vnet import VNet

    return VNet(2, 1, settings.base_filters, settings.normalization), "lab V-Net (labkit/labs/vnet.py)"


def _dice_loss(probabilities, target, eps: float = 1e-5):
    from seed_reference import seed_dice_loss

    return seed_dice_loss(probabilities, target, eps)


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
