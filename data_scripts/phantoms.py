"""Synthetic stand-ins for the two course data sets, written in the official on-disk layouts.

The real sets (MSD Task05 prostate MRI, Montgomery chest X-rays) must be downloaded; these
phantoms let the labs, the tests and CI run anywhere. Each is drawn from smooth random anatomy,
so a network has something to learn, with overlapping tissue intensities, so a single threshold
does not solve the task. Prostate MRI: two channels (T2-like, ADC-like) built in world mm, so
the stored array follows the affine (some cases stored flipped, like real scans); pelvis, bladder,
rectum and a gland with transition zone (label 2) and posterior peripheral zone (label 1).
Chest X-ray: attenuation of body, lungs, heart, spine, ribs and clavicles as a 12-bit
radiograph, with left and right lung masks. All randomness comes from the ``numpy.random.
Generator`` passed in: a seed gives the same set on every machine, whatever the workers.

``make_phantoms.py`` (``make data``) and the tests' tiny sets use it; it imports labkit (the
layouts, atomic folders), labkit never imports it.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from labkit.data.batching import default_workers  # noqa: E402
from labkit.data.lung import SYNTHETIC_PIXEL_SPACING_MM  # noqa: E402
from labkit.io import atomic_dir  # noqa: E402
from labkit.paths import SYNTHETIC_MARKER  # noqa: E402

MARKER_TEXT = (
    "This folder holds SYNTHETIC phantoms made by `make data` (data_scripts/phantoms.py),\n"
    "not real patient data. Results on it only show that the code runs and learns.\n"
    "Fetch the real set with data_scripts/fetch_prostate.py or data_scripts/fetch_montgomery.py.\n"
)


def smooth_field(rng: np.random.Generator, shape, coarse_shape) -> np.ndarray:
    """A smooth random field (about zero mean, unit spread) of ``shape``: Gaussian noise on a
    coarse grid, spread out with separable Gaussian weights, one axis at a time."""
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (size, nodes) in enumerate(zip(shape, coarse_shape, strict=True)):
        position = (np.arange(size, dtype=np.float32) + 0.5) / size * nodes - 0.5
        weights = np.exp(-((position[:, None] - np.arange(nodes)[None, :]) / 0.8) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        field = np.moveaxis(np.tensordot(weights, np.moveaxis(field, axis, 0), axes=1), 0, axis)
    return field / max(float(field.std()), 1e-6)


def _write_set(dataset_dir, folders, files: dict, function, jobs, workers, progress) -> Path:
    """Make ``folders``, ``files`` ({name: text}) and the synthetic marker in a temporary folder
    beside ``dataset_dir``, run ``function((folder, *job))`` for every job (in a process pool
    when there are cores to spare; each job seeds its own generator), then rename it into place."""
    workers = default_workers() if workers is None else max(1, int(workers))
    parallel = workers > 1 and len(jobs) >= 4  # fork on Linux: workers run numpy, scipy, nibabel
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context) if parallel else nullcontext()
    with atomic_dir(dataset_dir) as folder, pool:
        for sub in folders:
            (folder / sub).mkdir(parents=True)
        jobs = [(folder,) + tuple(job) for job in jobs]
        done = pool.map(function, jobs) if parallel else map(function, jobs)
        for _ in progress(done, len(jobs)) if progress else done:
            pass
        for name, text in dict(files, **{SYNTHETIC_MARKER: MARKER_TEXT}).items():
            (folder / name).write_text(text, encoding="utf-8")
    return Path(dataset_dir)


# ---- prostate MRI ----


@dataclass(frozen=True)
class ProstateGeometry:
    """Ranges the prostate phantoms are drawn from (defaults: like the MSD scans)."""

    in_plane_sizes: tuple = (256, 320, 320, 384)  # voxels; drawn uniformly from this list
    slices: tuple = (11, 24)  # inclusive range of slice counts
    field_of_view_mm: tuple = (170.0, 230.0)  # in-plane extent
    thickness_mm: tuple = (3.0, 4.0)  # slice spacing
    flip_probability: float = 0.3  # per in-plane axis: stored mirrored (negative affine entry)


DEFAULT_PROSTATE = ProstateGeometry()
TINY_PROSTATE = ProstateGeometry(in_plane_sizes=(40, 48), slices=(10, 12),
                                 field_of_view_mm=(110.0, 130.0), thickness_mm=(6.0, 7.0))

# (T2-like, ADC-like in 1e-6 mm^2/s) per tissue; ADC is quantitative, T2 is arbitrary units.
TISSUES = {
    "air": (7.5, 30.0), "fat": (425.0, 200.0), "muscle": (145.0, 1450.0), "bone": (45.0, 350.0),
    "marrow": (280.0, 650.0), "bladder": (575.0, 2800.0), "rectal_wall": (130.0, 1300.0),
    "rectal_fluid": (450.0, 2400.0), "capsule": (105.0, 1150.0), "stroma": (125.0, 1100.0),
    "peripheral": (320.0, 1700.0), "transition": (200.0, 1250.0), "lesion": (165.0, 800.0),
}


def _prostate_affine(rng, geometry: ProstateGeometry):
    """Grid shape, affine and voxel spacing of one scan."""
    size = int(rng.choice(geometry.in_plane_sizes))
    slices = int(rng.integers(geometry.slices[0], geometry.slices[1] + 1))
    in_plane = float(rng.uniform(*geometry.field_of_view_mm)) / size
    thickness = float(rng.uniform(*geometry.thickness_mm))
    signs = [(-1.0 if rng.random() < geometry.flip_probability else 1.0) for _ in range(2)] + [1.0]
    spacing = np.array([in_plane, in_plane, thickness])
    shape = (size, size, slices)
    affine = np.diag(list(signs * spacing) + [1.0])
    scanner_centre = rng.uniform(-30, 30, size=3)  # where the grid's centre lies
    affine[:3, 3] = scanner_centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine, spacing


def _ellipsoid(u, v, w, centre, radii):
    """Normalised radius (<= 1 inside) of an axis-aligned ellipsoid in anatomy coordinates."""
    return np.sqrt(((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2
                   + ((w - centre[2]) / radii[2]) ** 2)


def _prostate_anatomy(rng, shape, affine):
    """``masks`` {tissue: boolean array}, painted in order (later entries cover earlier ones),
    and ``label`` uint8 (0 background, 1 PZ, 2 TZ) of one case."""
    # world coordinates (mm) along each axis, shaped to broadcast (diagonal affines only)
    x, y, z = (affine[axis, axis] * np.arange(shape[axis], dtype=np.float32) + affine[axis, 3]
               for axis in range(3))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    grid_centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
    extent = np.abs(np.diag(affine)[:3]) * np.array(shape)
    centre = grid_centre + rng.uniform(-0.12, 0.12, 3) * [extent[0], extent[1], 0.0]
    centre[2] += rng.uniform(-0.1, 0.1) * extent[2]
    angle = rng.uniform(-0.15, 0.15)  # small patient rotation in the axial plane
    dx, dy, w = x - centre[0], y - centre[1], z - centre[2]
    u = np.cos(angle) * dx + np.sin(angle) * dy  # patient left-right
    v = -np.sin(angle) * dx + np.cos(angle) * dy  # patient posterior (-) to anterior (+)

    masks = {}
    body = _ellipsoid(u, v, 0 * w, (0, rng.uniform(5, 20), 0),
                      (rng.uniform(140, 190), rng.uniform(95, 125), 1.0))
    masks["fat"] = body <= 1.0
    muscle_field = smooth_field(rng, shape, (6, 6, 3))
    masks["muscle"] = (body <= 0.86) & (muscle_field > rng.uniform(-0.3, 0.4))
    for side in (-1, 1):
        obturator = _ellipsoid(u, v, w, (side * rng.uniform(38, 48), rng.uniform(-5, 5), 0),
                               (rng.uniform(10, 15), rng.uniform(25, 32), 60))
        masks["muscle"] |= obturator <= 1.0
    pubis = [_ellipsoid(u, v, w, (side * rng.uniform(10, 16), rng.uniform(38, 46), 5),
                        (rng.uniform(9, 13), rng.uniform(8, 11), 40)) for side in (-1, 1)]
    masks["bone"] = (pubis[0] <= 1.0) | (pubis[1] <= 1.0)
    masks["marrow"] = (pubis[0] <= 0.7) | (pubis[1] <= 0.7)

    gland_radii = np.array([rng.uniform(18, 27), rng.uniform(14, 20), rng.uniform(15, 22)])
    bladder = _ellipsoid(u, v, w, (rng.uniform(-5, 5), rng.uniform(5, 15),
                                   gland_radii[2] + rng.uniform(12, 25)),
                         (rng.uniform(28, 45), rng.uniform(22, 35), rng.uniform(18, 30)))
    masks["bladder"] = bladder <= 1.0
    rectum_centre = (rng.uniform(-5, 5), -gland_radii[1] - rng.uniform(9, 14), 0)
    rectum = _ellipsoid(u, v, w, rectum_centre, (rng.uniform(12, 18), rng.uniform(9, 13), 200))
    masks["rectal_wall"] = rectum <= 1.0
    lumen = rectum <= rng.uniform(0.55, 0.75)
    masks["air"] = (body > 1.0) | (lumen & (rng.random() < 0.5))
    masks["rectal_fluid"] = lumen & ~masks["air"]

    gland, transition, peripheral, lesion = _gland(rng, u, v, w, gland_radii)
    masks.update(capsule=gland <= 1.0, stroma=gland <= 0.93, peripheral=peripheral,
                 transition=transition, lesion=lesion)
    label = np.zeros(shape, np.uint8)
    label[masks["stroma"]] = 2
    label[peripheral] = 1
    return masks, label


def _gland(rng, u, v, w, radii):
    """Normalised gland radius, transition- and peripheral-zone masks, and zero to two small
    dark nodules inside the peripheral zone (the labels ignore them)."""
    theta = np.arctan2(v, u)
    wobble = (1.0 + 0.06 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
              + 0.04 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi)))
    flatten = np.where(v < 0, 0.85, 1.0)  # posterior surface flatter (against the rectum)
    gland = _ellipsoid(u / wobble, v / (wobble * flatten), w, (0, 0, 0), radii)
    growth = rng.uniform(0.45, 0.8)  # benign enlargement of the transition zone varies a lot
    tz_centre = (rng.uniform(-2, 2), radii[1] * rng.uniform(0.1, 0.3), radii[2] * 0.1)
    tz_radii = radii * np.array([growth + 0.05, growth, growth + 0.1])
    inside = gland <= 0.93
    transition = inside & (_ellipsoid(u, v, w, tz_centre, tz_radii) <= 1.0)
    peripheral = inside & ~transition & (v < tz_centre[1])
    lesion = np.zeros(peripheral.shape, bool)
    for _ in range(int(rng.integers(0, 3))):
        centre = (rng.uniform(-0.6, 0.6) * radii[0], -rng.uniform(0.5, 0.8) * radii[1],
                  rng.uniform(-0.5, 0.5) * radii[2])
        size = rng.uniform(3, 7)
        lesion |= _ellipsoid(u, v, w, centre, (size, size, size * 1.3)) <= 1.0
    return gland, transition, peripheral, lesion & peripheral


def _prostate_channels(rng, masks, shape, spacing):
    """Paint tissues into T2-like and ADC-like channels with texture, blur, bias and noise."""
    texture = smooth_field(rng, shape, (max(shape[0] // 12, 4), max(shape[1] // 12, 4),
                                        max(shape[2] // 3, 3)))
    channels = []
    for channel, noise_sigma, bias_strength in ((0, 9.0, 0.25), (1, 35.0, 0.05)):
        image = np.zeros(shape, np.float32)
        for tissue, inside in masks.items():
            image[np.broadcast_to(inside, shape)] = TISSUES[tissue][channel] * rng.uniform(0.9, 1.1)
        image *= 1.0 + 0.12 * texture
        sigma = (0.6 * 0.6 / spacing[0], 0.6 * 0.6 / spacing[1], 0.3)
        image = ndimage.gaussian_filter(image, sigma)
        bias = smooth_field(rng, shape, (3, 3, 2))
        image *= np.exp(bias_strength * bias) * rng.uniform(0.7, 1.4)
        real = image + rng.normal(0, noise_sigma, shape).astype(np.float32)
        imaginary = rng.normal(0, noise_sigma, shape).astype(np.float32)
        channels.append(np.sqrt(real**2 + imaginary**2))  # magnitude images: Rician noise
    return np.clip(np.stack(channels, axis=-1), 0, 32767).round().astype(np.int16)


def make_prostate_case(rng: np.random.Generator, geometry: ProstateGeometry = DEFAULT_PROSTATE):
    """One synthetic prostate scan: ``image`` int16 (X, Y, Z, 2) (T2-like, ADC-like), ``label``
    uint8 (X, Y, Z) (0 background, 1 peripheral zone, 2 transition zone) and ``affine``, the 4x4
    voxel-to-world (RAS mm) matrix.

    Example:
        >>> image, label, affine = make_prostate_case(np.random.default_rng(0), TINY_PROSTATE)
        >>> image.shape[-1], sorted(np.unique(label).tolist())
        (2, [0, 1, 2])
    """
    shape, affine, spacing = _prostate_affine(rng, geometry)
    masks, label = _prostate_anatomy(rng, shape, affine)
    image = _prostate_channels(rng, masks, shape, spacing)
    return image, label, affine


def write_prostate_set(dataset_dir, n_train: int = 32, n_test: int = 4, seed: int = 0,
                       geometry: ProstateGeometry = DEFAULT_PROSTATE, progress=None,
                       workers: int | None = None) -> Path:
    """Build a synthetic Task05_Prostate folder ``dataset_dir`` (must not exist) atomically:
    ``n_train`` labelled cases, ``n_test`` unlabelled, a function of ``seed`` only (not of
    ``workers``, processes drawing cases, default ``min(4, CPU cores)``); ``geometry``:
    ``TINY_PROSTATE`` for fast tests; ``progress(iterable, total)`` wraps the case loop."""
    numbers = np.random.default_rng(seed).permutation(n_train + n_test)
    train_ids = [f"prostate_{n:02d}" for n in sorted(numbers[:n_train])]
    test_ids = [f"prostate_{n:02d}" for n in sorted(numbers[n_train:])]
    jobs = [(name, labelled, seed, geometry)
            for names, labelled in ((train_ids, True), (test_ids, False)) for name in names]
    record = {  # the MSD-style dataset.json, plus "synthetic": true
        "name": "PROSTATE",
        "description": "Synthetic prostate phantoms in the Medical Segmentation Decathlon "
                       "Task05 layout",
        "reference": "data_scripts/phantoms.py (not patient data)", "licence": "CC-BY-SA 4.0",
        "release": "labkit synthetic 1.0", "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": len(train_ids), "numTest": len(test_ids),
        "training": [{"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
                     for name in train_ids],
        "test": [f"./imagesTs/{name}.nii.gz" for name in test_ids], "synthetic": True}
    return _write_set(dataset_dir, ("imagesTr", "labelsTr", "imagesTs"),
                      {"dataset.json": json.dumps(record, indent=4) + "\n"}, _write_prostate_case,
                      jobs, workers, progress)


def _write_prostate_case(job) -> None:
    folder, name, labelled, seed, geometry = job
    rng = np.random.default_rng([seed, 5, int(name.split("_")[1])])
    image, label, affine = make_prostate_case(rng, geometry)
    files = [(image, "imagesTr" if labelled else "imagesTs")] + [(label, "labelsTr")] * labelled
    for array, sub in files:
        volume = nib.Nifti1Image(array, affine)
        volume.header.set_xyzt_units("mm", "sec")
        volume.set_qform(affine, code=1)
        volume.set_sform(affine, code=1)
        nib.save(volume, str(folder / sub / f"{name}.nii.gz"))


# ---- chest X-ray ----


@dataclass(frozen=True)
class LungGeometry:
    """Ranges the chest X-ray phantoms are drawn from (defaults: Montgomery scaled about 1/8)."""

    long_side: tuple = (480, 640)  # pixels, inclusive range
    landscape_probability: float = 0.15  # real set: 4020 x 4892 portrait, a few landscape
    border_probability: float = 0.3  # black padding on some sides


DEFAULT_LUNG = LungGeometry()
TINY_LUNG = LungGeometry(long_side=(80, 100))

# Lung outlines in thorax units: x from -1 (image left, patient right) to 1, y from 0 (apex)
# to 1 (costophrenic angle). Clockwise closed polygons, smoothed by corner cutting.
_RIGHT_LUNG = [(-0.40, 0.00), (-0.62, 0.07), (-0.80, 0.28), (-0.88, 0.58), (-0.92, 0.90),
               (-0.90, 1.00), (-0.72, 0.92), (-0.45, 0.84), (-0.20, 0.86), (-0.10, 0.88),
               (-0.10, 0.60), (-0.13, 0.35), (-0.18, 0.12), (-0.28, 0.02)]
_LEFT_LUNG = [(0.28, 0.02), (0.18, 0.12), (0.15, 0.35), (0.20, 0.55), (0.32, 0.72),
              (0.42, 0.92), (0.60, 0.95), (0.82, 1.00), (0.92, 1.02), (0.92, 0.90), (0.88, 0.58),
              (0.80, 0.28), (0.62, 0.07), (0.40, 0.00)]


def _smooth_polygon(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Chaikin corner cutting: each round replaces every edge by its 1/4 and 3/4 points."""
    for _ in range(rounds):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following],
                          axis=1).reshape(-1, 2)
    return points


def _lung_masks(rng, height, width, frame):
    centre_x, half_width, top, lung_height = frame
    masks = []
    for outline in (_RIGHT_LUNG, _LEFT_LUNG):
        points = _smooth_polygon((np.array(outline) + rng.normal(0, 0.02, (len(outline), 2)))
                                 * rng.uniform(0.92, 1.08, 2))
        pixels = np.stack([centre_x + points[:, 0] * half_width,
                           top + points[:, 1] * lung_height], 1)
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in pixels], fill=1)
        masks.append(np.asarray(canvas, dtype=bool))
    return masks  # [right lung (image left), left lung (image right)]


def _band(x, y, curve_y, half_thickness, x_range):
    """Soft band around the curve y = curve_y(x) for x inside x_range (thorax units)."""
    distance = np.abs(y - curve_y(x)) / half_thickness
    inside = (x >= x_range[0]) & (x <= x_range[1])
    return np.where(inside, np.clip(1.2 - distance, 0, 1), 0.0)


def _attenuation(rng, height, width, frame, right, left):
    """Total attenuation along each ray (arbitrary units) and the heart mask."""
    centre_x, half_width, top, lung_height = frame
    x = ((np.arange(width, dtype=np.float32) - centre_x) / half_width)[None, :]
    y = ((np.arange(height, dtype=np.float32) - top) / lung_height)[:, None]
    shoulder = 1.0 / (1.0 + np.exp(-(y + 0.2) / 0.06))
    body_half = 0.35 + (rng.uniform(1.05, 1.2) - 0.35) * shoulder
    body = np.clip(1.0 - (x / body_half) ** 2, 0, 1)
    attenuation = rng.uniform(0.9, 1.2) * np.sqrt(body)

    lungs = ndimage.gaussian_filter((right | left).astype(np.float32), 0.006 * height)
    attenuation -= rng.uniform(0.45, 0.65) * lungs * (0.6 + 0.4 * np.sqrt(body))
    heart_centre = (rng.uniform(0.05, 0.18), rng.uniform(0.72, 0.82))
    heart_radii = (rng.uniform(0.28, 0.38), rng.uniform(0.18, 0.26))
    heart = (((x - heart_centre[0]) / heart_radii[0]) ** 2
             + ((y - heart_centre[1]) / heart_radii[1]) ** 2 <= 1)
    attenuation += 0.45 * ndimage.gaussian_filter(heart.astype(np.float32), 0.01 * height)
    attenuation += 0.3 * ((np.abs(x) < 0.17) & (y > -0.3))  # mediastinum
    attenuation += 0.25 * (np.abs(x) < 0.07)  # spine
    attenuation += 0.25 / (1.0 + np.exp(-(y - 0.97) / 0.025))  # liver, abdomen below the diaphragm
    attenuation += _bones(rng, x, y)
    attenuation += 0.05 * smooth_field(rng, (height, width), (24, 24)) * lungs  # vessels
    return np.clip(attenuation, 0, None) * body.astype(bool), heart


def _bones(rng, x, y):
    bones = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    spacing = rng.uniform(0.085, 0.1)
    start = rng.uniform(-0.06, 0.0)
    for k in range(10):
        for side in (-1, 1):
            level = start + k * spacing
            curvature = rng.uniform(0.18, 0.26)
            x_range = (0.06, 1.05) if side > 0 else (-1.05, -0.06)
            back = _band(x, y, lambda s, lv=level, c=curvature: lv - 0.05 * np.abs(s) + c * s**2,
                         0.018, x_range)
            front = _band(x, y, lambda s, lv=level: lv + 0.18 + 0.16 * (1 - np.abs(s)), 0.022,
                          x_range)
            bones += 0.2 * back + 0.1 * front * (np.abs(x) < 0.8)
    for side in (-1, 1):
        tilt = rng.uniform(0.08, 0.16)
        clavicle = _band(x, y, lambda s, t=tilt: -0.02 - t * np.abs(s), 0.03,
                         (0.08, 0.8) if side > 0 else (-0.8, -0.08))
        bones += 0.35 * clavicle
    return bones


def make_lung_case(rng: np.random.Generator, geometry: LungGeometry = DEFAULT_LUNG):
    """One synthetic chest X-ray: ``image`` uint16 (H, W) with 12-bit values, ``left`` and
    ``right`` uint8 masks (0/255) of the patient's left lung (image right) and right lung.

    Example:
        >>> image, left, right = make_lung_case(np.random.default_rng(0), TINY_LUNG)
        >>> image.dtype.name, int(image.max()) <= 4095, sorted(np.unique(left).tolist())
        ('uint16', True, [0, 255])
    """
    long_side = int(rng.integers(geometry.long_side[0], geometry.long_side[1] + 1))
    short_side = int(round(long_side * 4020 / 4892 * rng.uniform(0.95, 1.05)))
    landscape = rng.random() < geometry.landscape_probability
    height, width = (short_side, long_side) if landscape else (long_side, short_side)
    half_width = width * rng.uniform(0.33, 0.43)  # the thorax: centre, half width, apex, height
    centre_x = width * rng.uniform(0.47, 0.53)
    top = height * rng.uniform(0.08, 0.18)
    lung_height = min(height * rng.uniform(0.48, 0.62), height - top - 0.1 * height)
    frame = (centre_x, half_width, top, lung_height)
    right, left = _lung_masks(rng, height, width, frame)
    attenuation, heart = _attenuation(rng, height, width, frame, right, left)
    right, left = right & ~heart, left & ~heart
    image = 1.0 - np.exp(-rng.uniform(1.2, 1.8) * attenuation)  # exposure, blur, noise
    image = ndimage.gaussian_filter(image, 1.0)
    image = image * rng.uniform(0.75, 0.95) + rng.uniform(0.0, 0.08)
    image = image + rng.normal(0, 0.015, image.shape)
    image = np.clip(image, 0, 1) * 4095
    if rng.random() < geometry.border_probability:  # black padding on 1 to 4 sides
        for side in rng.choice(4, size=int(rng.integers(1, 5)), replace=False):
            depth = int(rng.uniform(0.02, 0.08) * (height if side < 2 else width))
            sides = (np.s_[:depth, :], np.s_[-depth:, :], np.s_[:, :depth], np.s_[:, -depth:])
            image[sides[side]] = 0
    image = image.round().astype(np.uint16)
    black = image == 0  # padding covers the masks too (the real masks end at the border)
    left, right = (((mask & ~black) * 255).astype(np.uint8) for mask in (left, right))
    return image, left, right


def write_lung_set(dataset_dir, n_cases: int = 80, seed: int = 0,
                   geometry: LungGeometry = DEFAULT_LUNG, progress=None,
                   workers: int | None = None) -> Path:
    """Build a synthetic MontgomerySet folder of ``n_cases`` radiographs atomically, as
    :func:`write_prostate_set` (``TINY_LUNG``: fast tests). About a third of the cases get the
    ``_1`` suffix the real set uses for abnormal readings."""
    folders = ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask", "ClinicalReadings")
    readme = ("Synthetic chest X-rays in the Montgomery County set layout "
              "(data_scripts/phantoms.py).\n"
              f"Pixel spacing: {SYNTHETIC_PIXEL_SPACING_MM} mm in both directions.\n")
    return _write_set(dataset_dir, folders, {"README.txt": readme}, _write_lung_case,
                      [(number, seed, geometry) for number in range(1, n_cases + 1)], workers,
                      progress)


def _write_lung_case(job) -> None:
    folder, number, seed, geometry = job
    rng = np.random.default_rng([seed, 12, number])
    abnormal = rng.random() < 0.35
    name = f"MCUCXR_{number:04d}_{int(abnormal)}"
    image, left, right = make_lung_case(rng, geometry)
    for array, sub in ((image, "CXR_png"), (left, "ManualMask/leftMask"),
                       (right, "ManualMask/rightMask")):
        Image.fromarray(array).save(folder / sub / f"{name}.png", compress_level=3)
    reading = (f"Patient's Sex: {'MF'[int(rng.integers(2))]}\n"
               f"Patient's Age: {int(rng.integers(18, 85)):03d}Y\n"
               f"{'synthetic abnormal reading' if abnormal else 'normal'}\n")
    (folder / "ClinicalReadings" / f"{name}.txt").write_text(reading, encoding="utf-8")
