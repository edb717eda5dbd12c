"""The old course's formulations, re-implemented here only to measure against them.

Nothing in the course imports this module. It reproduces *what the seed notebooks computed*
(not their text) so the benchmarks compare like with like:

Data (the old Lab 1 pipeline)
    nibabel load -> nilearn ``resample_img`` to ``np.diag(spacing)`` ('continuous' = cubic
    spline for the image, 'nearest' for the label) -> numpy (label > 0.5 as one class, image
    channels first, min-max per channel) -> centred crop after padding to at least ``size``.
    The old iterator deep-copied the case list when built, prepared cases in a thread pool,
    and deep-copied the *whole prepared data set* at the start of every epoch.

Network (the old Lab 1 V-Net)
    Residual stages of 1, 2, 3, 3, 3, 3, 3, 2, 1 convolutions, 2x2x2 strided down / transposed
    up convolutions, summed long skips, and a hand-written group normalisation (16 groups,
    statistics through ``view`` + ``mean`` + ``var``), wrapped in ``nn.DataParallel``.
"""

from __future__ import annotations

import copy
import random
import warnings
from multiprocessing.pool import ThreadPool

import numpy as np

# ----------------------------------------------------------------------------------------------
# Data path
# ----------------------------------------------------------------------------------------------


def seed_resample(path: str, spacing, interpolation: str):
    """nibabel load + nilearn resampling onto an axis-aligned grid of ``spacing`` mm."""
    import nibabel as nib
    from nilearn.image import resample_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notices about future defaults
        return resample_img(nib.load(path), target_affine=np.diag([float(s) for s in spacing]),
                            interpolation=interpolation, force_resample=True, copy_header=True)


def seed_image_array(image) -> np.ndarray:
    """(C, X, Y, Z) float32, each channel scaled to [0, 1] by its min and max."""
    array = np.asarray(image.get_fdata(dtype=np.float32))
    array = np.moveaxis(array, -1, 0) if array.ndim == 4 else array[None]
    low = array.min(axis=(1, 2, 3), keepdims=True)
    high = array.max(axis=(1, 2, 3), keepdims=True)
    return ((array - low) / (high - low)).astype(np.float32)  # no guard, as in the seed


def seed_label_array(image) -> np.ndarray:
    """(1, X, Y, Z) float32: every structure above 0.5 becomes foreground."""
    return (np.asarray(image.get_fdata(dtype=np.float32)) > 0.5).astype(np.float32)[None]


def seed_crop_window(shape, size):
    """(padding before, crop start in the padded array) of the seed's centred crop."""
    shape, size = np.asarray(shape), np.asarray(size)
    pad = np.maximum(size - shape + 1, 0)  # the seed padded one voxel more than needed
    before = pad // 2
    start = (shape + pad) // 2 - size // 2
    return before, pad - before, start


def seed_crop(array: np.ndarray, size):
    """Pad (zeros) then crop the last three axes around the centre, the seed's way.

    Returns:
        (cropped array, index in the unpadded array of the crop's first voxel).
    """
    before, after, start = seed_crop_window(array.shape[1:], size)
    padded = np.pad(array, [(0, 0)] + [(int(b), int(a)) for b, a in zip(before, after, strict=True)])
    stop = start + np.asarray(size)
    cropped = padded[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    return np.ascontiguousarray(cropped), start - before


def seed_prepare_case(case: dict, spacing, size, keep_geometry: bool = False) -> dict:
    """The seed's global transforms on one case (paths -> network-ready arrays)."""
    image = seed_resample(case["image"], spacing, "continuous")
    label = seed_resample(case["label"], spacing, "nearest")
    image_array, first_voxel = seed_crop(seed_image_array(image), size)
    label_array, _ = seed_crop(seed_label_array(label), size)
    prepared = {"id": case["id"], "images": [image_array], "labels": [label_array]}
    if keep_geometry:
        shift = np.eye(4)
        shift[:3, 3] = first_voxel
        prepared["affine"] = np.asarray(image.affine) @ shift
        raw = np.moveaxis(np.asarray(image.get_fdata(dtype=np.float32)), -1, 0)
        prepared["raw_image"], _ = seed_crop(raw, size)
    return prepared


class SeedBatchIterator:
    """The seed's iterator: prepare every case up front, deep-copy the data set each epoch."""

    def __init__(self, cases, batch_size: int, spacing, size, shuffle: bool = True, threads: int = 32):
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.data = copy.deepcopy(list(cases))
        with ThreadPool(threads) as pool:
            self.data = pool.map(lambda case: seed_prepare_case(case, spacing, size), self.data)

    def __len__(self) -> int:
        return int(np.ceil(len(self.data) / self.batch_size))

    def __iter__(self):
        data = copy.deepcopy(self.data)  # the whole prepared set, every epoch
        if self.shuffle:
            random.shuffle(data)
        for start in range(0, len(data), self.batch_size):
            chunk = data[start:start + self.batch_size]
            yield {key: np.stack([case[key][0] for case in chunk]) for key in ("images", "labels")}


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


def build_seed_vnet(in_channels: int = 2, out_channels: int = 1, n_filters: int = 16,
                    normalization: str = "groupnorm", data_parallel: bool = True,
                    hand_written_norm: bool = True):
    """The seed's V-Net formulation (see the module docstring), optionally in DataParallel.

    ``hand_written_norm=False`` swaps only the group normalisation for ``nn.GroupNorm`` (same
    16 groups, same maths up to the variance's n / n-1): it isolates what that layer costs.
    """
    import torch
    from torch import nn

    class HandWrittenGroupNorm3d(nn.Module):
        """Group normalisation written out by hand: the seed's slow formulation."""

        def __init__(self, channels: int, groups: int = 16, eps: float = 1e-5):
            super().__init__()
            if channels % groups:
                raise ValueError(f"{channels} channels cannot form {groups} groups")
            self.groups, self.eps = groups, eps
            self.weight = nn.Parameter(torch.ones(1, channels, 1, 1, 1))
            self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))

        def forward(self, x):
            batch, channels, *spatial = x.shape
            grouped = x.view(batch, self.groups, -1)
            mean = grouped.mean(-1, keepdim=True)
            variance = grouped.var(-1, keepdim=True)  # unbiased, as torch.var defaults
            grouped = (grouped - mean) / (variance + self.eps).sqrt()
            return grouped.view(batch, channels, *spatial) * self.weight + self.bias

    def norm(channels):
        if normalization == "groupnorm":
            return [HandWrittenGroupNorm3d(channels) if hand_written_norm else nn.GroupNorm(16, channels)]
        if normalization == "batchnorm":
            return [nn.BatchNorm3d(channels)]
        return []

    class ResidualStage(nn.Module):
        def __init__(self, n_convs, channels_in, channels_out, expand=False):
            super().__init__()
            layers = []
            for index in range(n_convs):
                width_in = channels_in if index == 0 else channels_out
                layers += [nn.Conv3d(width_in, channels_out, 3, padding=1), *norm(channels_out),
                           nn.ReLU(inplace=True)]
            self.convs = nn.Sequential(*layers)
            self.expand = (nn.Sequential(nn.Conv3d(channels_in, channels_out, 1),
                                         *norm(channels_out), nn.ReLU(inplace=True))
                           if expand else None)

        def forward(self, x):
            shortcut = self.expand(x) if self.expand is not None else x
            return self.convs(x) + shortcut

    def resize_block(channels_in, channels_out, up):
        conv = (nn.ConvTranspose3d if up else nn.Conv3d)(channels_in, channels_out, 2, stride=2)
        return nn.Sequential(conv, *norm(channels_out), nn.ReLU(inplace=True))

    class SeedVNet(nn.Module):
        def __init__(self):
            super().__init__()
            f = n_filters
            widths = [f, 2 * f, 4 * f, 8 * f, 16 * f]
            self.encoder = nn.ModuleList([
                ResidualStage(1, in_channels, f, expand=in_channels > 1),
                ResidualStage(2, 2 * f, 2 * f), ResidualStage(3, 4 * f, 4 * f),
                ResidualStage(3, 8 * f, 8 * f), ResidualStage(3, 16 * f, 16 * f)])
            self.down = nn.ModuleList([resize_block(widths[i], widths[i + 1], up=False)
                                       for i in range(4)])
            self.up = nn.ModuleList([resize_block(widths[i + 1], widths[i], up=True)
                                     for i in reversed(range(4))])
            self.decoder = nn.ModuleList([ResidualStage(n, w, w) for n, w in
                                          zip((3, 3, 2, 1), reversed(widths[:4]), strict=True)])
            self.head = nn.Conv3d(f, out_channels, 1)

        def forward(self, x):
            skips = []
            for stage, down in zip(self.encoder[:4], self.down, strict=True):
                x = stage(x)
                skips.append(x)
                x = down(x)
            x = self.encoder[4](x)
            for up, stage, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
                x = stage(up(x) + skip)
            return self.head(x)

    net = SeedVNet()
    return nn.DataParallel(net) if data_parallel else net


def seed_dice_loss(probabilities, target, eps: float = 1e-5):
    """The seed's loss: 1 - 2 sum(p t) / (sum p^2 + sum t^2), per case, averaged."""
    dims = tuple(range(2, probabilities.ndim))
    overlap = (probabilities * target).sum(dims)
    total = (probabilities ** 2).sum(dims) + (target ** 2).sum(dims)
    return (1.0 - 2.0 * overlap / (total + eps)).mean()
