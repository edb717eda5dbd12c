"""Array functions and dict transforms: each checked against a trusted peer or by hand."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from labkit.data import transforms as T
from labkit.data.errors import DataError


def _volume(shape=(12, 10, 8), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _oblique_affine(degrees=12.0, spacing=(0.8, 0.9, 3.0), flip_x=False):
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing) @ np.diag([-1 if flip_x else 1, 1, 1])
    affine[:3, 3] = [-20.0, 14.0, 7.5]
    return affine


@pytest.mark.parametrize("affine", [
    np.diag([0.7, 0.7, 3.5, 1.0]),
    np.diag([-0.6, 0.6, 3.0, 1.0]),
    _oblique_affine(),
    _oblique_affine(-20, flip_x=True),
], ids=["axis-aligned", "flipped", "oblique", "oblique-flipped"])
def test_resample_matches_nilearn_linear(affine):
    from nilearn.image import resample_img

    data = _volume((20, 18, 7))
    spacing = (1.5, 1.5, 2.0)
    ours, our_affine = T.resample(data, affine, spacing, order=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = resample_img(nib.Nifti1Image(data, affine), target_affine=np.diag(spacing),
                              interpolation="linear", force_resample=True, copy_header=True)
    np.testing.assert_allclose(our_affine, theirs.affine, atol=1e-6)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs.get_fdata(), atol=1e-5)


def test_resample_keeps_channels_and_label_values():
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    image = np.stack([_volume(seed=1), _volume(seed=2)])
    label = np.random.default_rng(3).integers(0, 3, (1, 12, 10, 8)).astype(np.float32)
    out, _ = T.resample(image, affine, (1.2, 1.2, 1.2), order=1)
    assert out.shape[0] == 2 and out.dtype == np.float32
    np.testing.assert_allclose(out[1], T.resample(image[1], affine, (1.2, 1.2, 1.2))[0])
    out_label, _ = T.resample(label, affine, (1.2, 1.2, 1.2), order=0)
    assert set(np.unique(out_label).tolist()) <= {0.0, 1.0, 2.0}


def test_reorient_flipped_volume_matches_nibabel_canonical():
    data = _volume()
    affine = np.diag([-0.7, 0.7, 3.0, 1.0])
    affine[:3, 3] = [30, -10, 5]
    ours, our_affine = T.reorient_to_canonical(data[None], affine)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    np.testing.assert_allclose(ours[0], canonical.get_fdata())
    np.testing.assert_allclose(our_affine, canonical.affine)
    assert nib.aff2axcodes(our_affine) == ("R", "A", "S")


def test_reorient_permuted_axes_and_world_positions_kept():
    affine = np.array([[0, 0, 3.0, 1], [-0.5, 0, 0, 2], [0, 0.5, 0, 3], [0, 0, 0, 1]])
    data = _volume((6, 5, 4))
    out, new_affine = T.reorient_to_canonical(data[None], affine)
    assert nib.aff2axcodes(new_affine) == ("R", "A", "S")
    # the voxel holding the maximum sits at the same world position before and after
    old_index = np.array(np.unravel_index(data.argmax(), data.shape) + (1,))
    new_index = np.array(np.unravel_index(out[0].argmax(), out[0].shape) + (1,))
    np.testing.assert_allclose(affine @ old_index, new_affine @ new_index)


def test_reorient_oblique_keeps_rotation_for_resampling():
    affine = _oblique_affine(15)
    out, new_affine = T.reorient_to_canonical(_volume()[None], affine)
    np.testing.assert_allclose(new_affine, affine)  # already closest to RAS: nothing to move
    assert out.shape == (1, 12, 10, 8)


def test_normalize_intensity_per_channel_and_constant_safe():
    image = np.stack([_volume() * 100 + 5, np.full((12, 10, 8), 7.0, np.float32)])
    out = T.normalize_intensity(image)
    assert abs(out[0].mean()) < 1e-5 and abs(out[0].std() - 1) < 1e-4
    assert np.all(out[1] == 0) and np.isfinite(out).all()
    unit = T.normalize_intensity(np.arange(100.0).reshape(10, 10), mode="minmax", per_channel=False,
                                 percentiles=(0, 100))
    assert unit.min() == 0 and unit.max() == 1
    with pytest.raises(ValueError, match="unknown normalisation"):
        T.normalize_intensity(image, mode="rank")


def test_crop_or_pad_is_centred():
    array = np.arange(1.0, 6.0)[None]
    np.testing.assert_array_equal(T.crop_or_pad(array, (3,)), [[2, 3, 4]])
    np.testing.assert_array_equal(T.crop_or_pad(array, (8,)), [[0, 0, 1, 2, 3, 4, 5, 0]])
    np.testing.assert_array_equal(T.crop_or_pad(array, (4,)), [[1, 2, 3, 4]])
    out = T.crop_or_pad(np.ones((2, 5, 6, 7)), (4, 8, 7))
    assert out.shape == (2, 4, 8, 7) and out.sum() == 2 * 4 * 6 * 7


def test_black_border_box_and_resize():
    image = np.zeros((20, 30), np.float32)
    image[3:15, 5:25] = 0.5
    assert T.black_border_box(image) == (slice(3, 15), slice(5, 25))
    assert T.resize(np.ones((40, 30)), (10, 12), order=1).shape == (10, 12)
    label = np.zeros((40, 40), np.float32)
    label[10:30, 10:30] = 1
    small = T.resize(label, (20, 20), order=0)
    assert set(np.unique(small).tolist()) == {0.0, 1.0} and small.sum() == 100


def test_fuse_and_map_labels():
    left, right = np.array([[0, 255], [0, 0]]) / 255, np.array([[0, 0], [1, 0]], float)
    np.testing.assert_array_equal(T.fuse_masks(left, right), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(T.map_labels(np.array([0, 1, 2]), {0: 0, 1: 1, 2: 1}), [0, 1, 1])
    with pytest.raises(ValueError, match="not in"):
        T.map_labels(np.array([0, 3]), {0: 0, 1: 1})
    # float32 voxels in the file's (Fortran) order, as LoadNifti gives them, and uint8
    label = np.asfortranarray(np.random.default_rng(0).integers(0, 3, (6, 5, 4))).astype(np.float32)
    for variant in (label, label.astype(np.uint8), label[::-1]):
        np.testing.assert_array_equal(T.map_labels(variant, {0: 0, 1: 1, 2: 1}), np.asarray(variant) > 0)
    with pytest.raises(ValueError, match=r"\[1\] are not in"):
        T.map_labels(np.array([0.0, 1.0]), {0: 0, 2: 1})
    with pytest.raises(ValueError, match="not in"):  # not whole numbers: the general path
        T.map_labels(np.array([0.0, 0.5]), {0: 0, 1: 1})


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("kind", ["int16-scaled", "float32", "uint8-3d", "big-endian", "float64-nan"])
@pytest.mark.parametrize("gzip_module", ["isal", "stdlib"])
def test_fast_nifti_reader_equals_nibabel(tmp_path, monkeypatch, suffix, kind, gzip_module):
    """LoadNifti's one-shot reader gives nibabel's float32 voxels, scaling and byte order included."""
    import builtins

    if gzip_module == "stdlib":  # as on a machine without the optional `isal` package
        real_import = builtins.__import__

        def no_isal(name, *args, **kwargs):
            if name == "isal":
                raise ImportError("no isal")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_isal)
    rng = np.random.default_rng(1)
    affine = np.diag([-0.6, 0.7, 3.0, 1.0])
    if kind == "int16-scaled":
        image = nib.Nifti1Image((rng.random((9, 8, 5, 2)) * 3000).astype(np.int16), affine)
        image.header.set_slope_inter(0.5, -10.0)
    elif kind == "float32":
        image = nib.Nifti1Image(rng.random((9, 8, 5, 2)).astype(np.float32), affine)
    elif kind == "uint8-3d":
        image = nib.Nifti1Image(rng.integers(0, 3, (9, 8, 5)).astype(np.uint8), affine)
    elif kind == "big-endian":
        image = nib.Nifti1Image(rng.random((9, 8, 5)).astype(">f4"), affine)
    else:
        data = rng.random((9, 8, 5))
        data[1, 2, 3] = np.nan
        image = nib.Nifti1Image(data, affine)
    path = tmp_path / f"volume{suffix}"
    nib.save(image, path)
    expected = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    expected = np.nan_to_num(expected[None] if expected.ndim == 3 else np.moveaxis(expected, -1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.DataWarning)
        got = T.LoadNifti(["image"])({"image": str(path)})["image"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("stored", ["uint8", ">i2", "int16-scaled", "float32"])
def test_integer_keys_keep_unscaled_integers_and_map_to_the_same_labels(tmp_path, stored):
    """A label map read with ``integer_keys`` keeps the file's integers when nothing scales them
    (native byte order, writable), and MapLabels gives exactly what it gives on float32 voxels."""
    rng = np.random.default_rng(2)
    values = rng.integers(0, 3, (9, 8, 5))
    image = nib.Nifti1Image(values.astype(stored.replace("-scaled", "")), np.diag([0.6, 0.6, 3.0, 1.0]))
    if stored == "int16-scaled":
        image.header.set_slope_inter(2.0, 0.0)
    path = tmp_path / "label.nii.gz"
    nib.save(image, path)
    kept = T.LoadNifti("label", integer_keys=["label"])({"label": str(path)})["label"]
    floats = T.LoadNifti("label")({"label": str(path)})["label"]
    integers_stay = stored in ("uint8", ">i2")
    assert (kept.dtype.kind in "iu") == integers_stay and kept.dtype.isnative and kept.flags.writeable
    np.testing.assert_array_equal(kept, floats)
    mapping = {0: 0, 1: 1, 2: 1, 4: 1}
    for label in (kept, floats):
        mapped = T.MapLabels("label", mapping)({"label": label})["label"]
        assert mapped.dtype == np.float32
        np.testing.assert_array_equal(mapped, T.map_labels(floats, mapping))


def test_fast_nifti_reader_names_a_truncated_file(tmp_path):
    path = tmp_path / "short.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((30, 30, 20), np.float32), np.eye(4)), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="short.nii.gz: the file is damaged or truncated"):
        T.LoadNifti(["image"])({"image": str(path)})
    plain = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(np.ones((30, 30, 20), np.float32), np.eye(4)), plain)
    plain.write_bytes(plain.read_bytes()[:5000])
    with pytest.raises(DataError, match="short.nii: the file is damaged or truncated"):
        T.LoadNifti(["image"])({"image": str(plain)})


def test_reprs_are_stable_and_differ_with_settings():
    assert repr(T.Resample(["image"], [1, 1, 1], 1)) == repr(T.Resample(("image",), (1.0, 1.0, 1.0), 1))
    assert repr(T.CropOrPad("image", (8, 8, 8))) != repr(T.CropOrPad("image", (8, 8, 4)))
    assert repr(T.MapLabels("label", {2: 1, 0: 0, 1: 1})) == repr(T.MapLabels("label", {0: 0, 1: 1, 2: 1}))
    assert "spacing=(1.0, 1.0, 1.0)" in repr(T.Resample("image", (1, 1, 1)))


def test_dict_transforms_do_not_change_their_input():
    case = {"id": "c", "image": np.ones((1, 4, 4, 4), np.float32)}
    out = T.NormalizeIntensity("image")(case)
    assert out is not case and np.all(case["image"] == 1)


def test_random_transforms_replay_with_the_same_rng_and_call_their_twin():
    case = {"image": _volume((1, 8, 8, 4)), "label": (_volume((1, 8, 8, 4)) > 0.5).astype(np.float32)}
    chain = T.Compose([T.RandomFlip(["image", "label"], axes=(0, 1)),
                       T.RandomAffine(["image", "label"], orders=(1, 0), probability=1.0),
                       T.RandomIntensity(["image"])])
    first = chain(case, np.random.default_rng(4))
    again = chain(case, np.random.default_rng(4))
    np.testing.assert_array_equal(first["image"], again["image"])
    assert set(np.unique(first["label"]).tolist()) <= {0.0, 1.0}
    flipped = T.RandomFlip("image", axes=(0,), probability=1.0)(case, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["image"], case["image"][:, ::-1])
    assert isinstance(T.RandomFlip("image").draw(np.random.default_rng(0)), T.Flip)
    with pytest.raises(ValueError, match="Generator"):
        T.RandomFlip("image")(case)


def test_affine_identity_and_rotation_by_90_degrees():
    image = np.zeros((1, 9, 9, 3), np.float32)
    image[0, 6, 4, :] = 1
    same = T.Affine("image", orders=(1,))({"image": image})
    np.testing.assert_allclose(same["image"], image, atol=1e-6)
    turned = T.Affine("image", orders=(0,), degrees=90)({"image": image})["image"]
    # output voxel o samples input centre + R(o - centre): input (6, 4) lands on (4, 2)
    assert turned.sum() == image.sum() and np.all(turned[0, 4, 2, :] == 1)


def test_shuffle_is_a_seeded_permutation_of_references():
    items = [{"n": i} for i in range(10)]
    shuffled = T.Shuffle()(items, np.random.default_rng(1))
    assert sorted(x["n"] for x in shuffled) == list(range(10))
    assert all(any(x is y for y in items) for x in shuffled)
    assert [x["n"] for x in shuffled] == [x["n"] for x in T.Shuffle()(items, np.random.default_rng(1))]


def test_load_nifti_meta_and_grid_tracking(tmp_path):
    affine = np.diag([-0.6, 0.6, 3.0, 1.0])
    image = np.random.default_rng(0).random((20, 20, 6, 2)).astype(np.float32)
    label = (image[..., 0] > 0.7).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "l.nii.gz")
    case = T.LoadNifti(["image", "label"], channels={"image": 2, "label": 1})(
        {"id": "x", "image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
    assert case["image"].shape == (2, 20, 20, 6) and case["label"].shape == (1, 20, 20, 6)
    meta = case["image_meta"]
    assert meta["shape"] == (20, 20, 6) and meta["spacing"] == pytest.approx((0.6, 0.6, 3.0))
    moved = T.CropOrPad(["image"], (10, 24, 6))(T.Reorient(["image"])(case))
    grid = moved["image_meta"]["grid_affine"]
    # voxel (0, 2, 0) of the padded, reoriented grid is original voxel (14, 0, 0)
    np.testing.assert_allclose(grid @ [0, 2, 0, 1], affine @ [14, 0, 0, 1])


def test_dataerror_message_names_file_problem_and_fix():
    error = DataError("a/b.nii.gz", "it is broken", "replace it")
    assert isinstance(error, ValueError)
    assert str(error) == "a/b.nii.gz: it is broken. Fix: replace it."


def test_junk_names():
    assert T.is_junk("._prostate_00.nii.gz") and T.is_junk(".DS_Store") and T.is_junk("__MACOSX")
    assert not T.is_junk("prostate_00.nii.gz")


def test_separable_resampling_equals_the_general_sampler():
    """The axis-aligned fast path gives what ndimage.affine_transform gives, edges included."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for trial in range(120):
        shape = tuple(int(n) for n in rng.integers(1, 20, 3))
        volume = (rng.random(shape) * 100).astype(np.float32)
        if trial % 3 == 1:  # a view like Reorient leaves of a file's voxels: swapped and flipped
            volume = np.asfortranarray(volume)[::-1]
        elif trial % 3 == 2:
            volume = np.ascontiguousarray(volume.transpose(2, 0, 1)).transpose(1, 2, 0)[:, ::-1]
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(rng.choice([0.25, 1 / 3, 0.6, 1.0, 1.7, 3.0], 3) * rng.choice([1, -1], 3))
        matrix[:3, 3] = rng.uniform(-4, 4, 3) if trial % 2 else np.round(rng.uniform(-4, 4, 3))
        output_shape = tuple(int(n) for n in rng.integers(1, 40, 3))
        for order in (0, 1):
            expected = ndimage.affine_transform(volume, matrix[:3, :3], offset=matrix[:3, 3],
                                                output_shape=output_shape, order=order, cval=0.0)
            got = T.separable_resample(volume, matrix, output_shape, order)
            np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=f"trial {trial}, order {order}")


def test_map_labels_transform_rounds_stored_values_first():
    """Labels stored with scaling can read as 0.99999: rounded, then mapped (not an error)."""
    case = {"label": np.array([[0.0, 0.99999, 2.00001, 1.0]], np.float32)}
    mapped = T.MapLabels("label", {0: 0, 1: 1, 2: 1})(case)["label"]
    np.testing.assert_array_equal(mapped, [[0, 1, 1, 1]])
    assert mapped.dtype == np.float32
    with pytest.raises(DataError, match="unexpected label values"):
        T.MapLabels("label", {0: 0, 1: 1})({"label": np.array([0.0, 2.0])})


def test_affine_in_plane_equals_the_general_sampler():
    """Affine's fast path gives ndimage.affine_transform's values (order 0 and 1, 2D and 3D,
    edges included) for rotations that are not multiples of 90 degrees; at exact multiples the
    two may differ on ties and on positions a rounding error away from the edge."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for trial in range(150):
        dims = 3 if trial % 3 else 2
        shape = tuple(int(n) for n in rng.integers(2, 24, dims))
        image = (rng.random((2,) + shape) * 100).astype(np.float32)
        transform = T.Affine("image", orders=(1,), degrees=rng.uniform(-40, 40), scale=rng.uniform(0.7, 1.3),
                             spatial_dims=dims)
        matrix = transform.matrix()
        centre = (np.array(shape) - 1) / 2
        offset = centre - matrix @ centre
        for order in (0, 1):
            expected = np.stack([ndimage.affine_transform(v, matrix, offset=offset, order=order, cval=0.0)
                                 for v in image])
            got = T.affine_in_plane(image, matrix, offset, order)
            assert got.shape == image.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=f"trial {trial}, order {order}")
    with pytest.raises(ValueError, match="third axis"):
        T.affine_in_plane(np.zeros((4, 4, 4), np.float32), np.array([[1, 0, 0.1], [0, 1, 0], [0, 0, 1]]),
                          np.zeros(3), 1)


def test_importing_the_data_layer_loads_neither_scipy_nor_nibabel():
    """``import labkit.data`` (and its transforms) stays light: heavy libraries load on use."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, labkit.data, labkit.data.transforms, labkit.data.batching\n"
            "print(json.dumps([m for m in ('scipy', 'nibabel', 'PIL') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
