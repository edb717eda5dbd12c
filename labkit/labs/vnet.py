# generated from notebooks/01_vnet_prostate.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: E402, I001
"""Lab code from notebooks/01_vnet_prostate.ipynb: its cells tagged ``export``.

Importable outside the notebook (tests, benchmarks, ``labkit.train``); regenerate with
``make export``.
"""


import numpy as np
from labkit.data.transforms import RandomAffine, RandomIntensity, RandomTransform
import torch
import math
from torch import nn
from labkit import torch_utils
from labkit.viz import progress


class RandomFlip(RandomTransform):
    """Mirror every key along one spatial axis with ``probability``: one draw per case."""

    def __init__(self, keys, axis=0, probability=0.5):
        self.keys = list(keys)
        self.axis = axis  # spatial axis: 0 = x, 1 = y, 2 = z
        self.probability = probability

    def __call__(self, case, rng):
        flip = rng.random() < self.probability  # one decision for the whole case
        case = dict(case)  # a new dict: the case we were given stays as it was
        if flip:
            for key in self.keys:
                case[key] = np.flip(case[key], axis=self.axis + 1).copy()
        return case


both = ["image", "label"]
augmentation = [RandomFlip(both, axis=0),  # left-right mirror, your Exercise 1
                RandomAffine(both, orders=(1, 0), degrees=10, scale=(0.9, 1.1)),  # label: nearest
                RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.1, 0.1))]


def dice_loss(prob, label, squared=True, eps=1e-5):
    """1 - soft Dice, per case, averaged over the batch.

    Args:
        prob: predicted probabilities, shape (batch, channels, x, y, z), values in [0, 1].
        label: the truth, same shape, 0 or 1.
        squared: V-Net's denominator sum(p^2) + sum(g^2); False: sum(p) + sum(g).
        eps: in the numerator and the denominator: two empty masks give Dice 1, loss 0.

    Returns:
        A scalar tensor: 0 for a perfect prediction, up to 1 for no overlap.
    """
    dims = tuple(range(1, prob.ndim))  # every axis but the batch axis
    overlap = (prob * label).sum(dims)
    if squared:
        total = (prob * prob).sum(dims) + (label * label).sum(dims)
    else:
        total = prob.sum(dims) + label.sum(dims)
    dice = (2 * overlap + eps) / (total + eps)
    return (1 - dice).mean()


def dice_score(prob, label, threshold=0.5):
    """Hard Dice per case, shape (batch,): prob > threshold against label (both empty: 1)."""
    pred = (prob > threshold).float()
    dims = tuple(range(1, pred.ndim))
    overlap = (pred * label).sum(dims)
    total = pred.sum(dims) + label.sum(dims)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


def make_norm(kind, channels):
    """The normalisation layer after a convolution: 'groupnorm', 'batchnorm' or 'none'."""
    if kind == "groupnorm":
        return nn.GroupNorm(num_groups=math.gcd(channels, 8), num_channels=channels)
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"normalization must be 'groupnorm', 'batchnorm' or 'none', not {kind!r}")


class ResidualBlock(nn.Module):
    """n_stages of conv 3x3x3 + norm (ReLU between them), plus a skip; ReLU after the sum."""

    def __init__(self, n_stages, in_channels, out_channels, normalization="groupnorm"):
        super().__init__()
        layers = []
        for stage in range(n_stages):
            layers.append(nn.Conv3d(in_channels if stage == 0 else out_channels, out_channels,
                                    kernel_size=3, padding=1))
            layers.append(make_norm(normalization, out_channels))
            if stage < n_stages - 1:
                layers.append(nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*layers)
        if in_channels == out_channels:
            self.skip = nn.Identity()
        else:  # a 1x1x1 convolution gives the input the right number of channels
            self.skip = nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=1),
                                      make_norm(normalization, out_channels))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.stages(x) + self.skip(x))


class DownConv(nn.Sequential):
    """Strided 2x2x2 convolution: half the size, more channels."""

    def __init__(self, in_channels, out_channels, normalization="groupnorm"):
        super().__init__(nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
                         make_norm(normalization, out_channels), nn.ReLU(inplace=True))


class UpConv(nn.Sequential):
    """Transposed 2x2x2 convolution: double the size, fewer channels."""

    def __init__(self, in_channels, out_channels, normalization="groupnorm"):
        super().__init__(nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
                         make_norm(normalization, out_channels), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """A V-Net with residual blocks and summation skips.

    Args:
        in_channels: image channels (2: T2 and ADC).
        out_channels: output channels (1: the gland; one logit per voxel).
        base_filters: channels of the first level, doubled at each level down.
        normalization: 'groupnorm', 'batchnorm' or 'none'.
        down_stages: convolutions per residual block on the way down (one entry per level).
        bottom_stages: convolutions in the bottom block.
        up_stages: convolutions per residual block on the way up (deepest level first).
    """

    def __init__(self, in_channels=2, out_channels=1, base_filters=16, normalization="groupnorm",
                 down_stages=(1, 2, 3, 3), bottom_stages=3, up_stages=(3, 3, 2, 1)):
        super().__init__()
        if len(up_stages) != len(down_stages):
            raise ValueError("up_stages needs one entry per level of down_stages")
        widths = [base_filters * 2**level for level in range(len(down_stages) + 1)]
        self.encoder, self.down = nn.ModuleList(), nn.ModuleList()
        channels = in_channels
        for level, n_stages in enumerate(down_stages):
            self.encoder.append(ResidualBlock(n_stages, channels, widths[level], normalization))
            self.down.append(DownConv(widths[level], widths[level + 1], normalization))
            channels = widths[level + 1]
        self.bottom = ResidualBlock(bottom_stages, channels, channels, normalization)
        self.up, self.decoder = nn.ModuleList(), nn.ModuleList()  # deepest level first
        for level, n_stages in zip(reversed(range(len(down_stages))), up_stages, strict=True):
            self.up.append(UpConv(widths[level + 1], widths[level], normalization))
            self.decoder.append(ResidualBlock(n_stages, widths[level], widths[level], normalization))
        self.head = nn.Conv3d(base_filters, out_channels, kernel_size=1)
        self.size_multiple = 2 ** len(down_stages)

    def forward(self, x):
        if any(side % self.size_multiple for side in x.shape[2:]):
            raise ValueError(f"input of spatial size {tuple(x.shape[2:])}: each side must be a "
                             f"multiple of {self.size_multiple}; pad or crop the volume")
        kept = []
        for block, down in zip(self.encoder, self.down, strict=True):
            x = block(x)
            kept.append(x)  # this level's features, for the way up
            x = down(x)
        x = self.bottom(x)
        for up, block in zip(self.up, self.decoder, strict=True):
            x = up(x) + kept.pop()  # the deepest kept features first; summation, not concatenation
            x = block(x)
        return self.head(x)


def to_tensors(batch, device, channels_last=False):
    """The batch's image and label as tensors on ``device``."""
    image = torch.from_numpy(batch["image"]).to(device, non_blocking=True)
    label = torch.from_numpy(batch["label"]).to(device, non_blocking=True)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return image, label


def train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate=1, scaler=None,
                    mixed_precision=False, channels_last=False):
    """One pass over ``batches``, one optimiser step per group of ``accumulate`` batches.

    Returns:
        {"loss": mean of the batches' losses, "dice": mean hard Dice of the training cases}.
    """
    device = torch.device(device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    net.train()  # every epoch: evaluate() below switches to eval mode
    optimizer.zero_grad(set_to_none=True)
    losses, dices = [], []
    for index, batch in enumerate(progress(batches, desc="train")):
        image, label = to_tensors(batch, device, channels_last)
        with torch_utils.autocast(device, mixed_precision):
            logits = net(image)
        prob = torch.sigmoid(logits.float())  # the loss in float32, also under autocast
        loss = loss_fn(prob, label)
        group = min(accumulate, len(batches) - index // accumulate * accumulate)  # the last may be short
        scaler.scale(loss / group).backward()
        if (index + 1) % accumulate == 0 or index + 1 == len(batches):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        # a NaN / Inf loss stops here, before the epoch's checkpoint is written
        losses.append(torch_utils.check_loss(loss.item(), step=index))
        dices.extend(dice_score(prob.detach(), label).tolist())
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}


@torch.no_grad()
def evaluate(net, batches, loss_fn, device, mixed_precision=False, channels_last=False):
    """Mean loss and mean hard Dice over ``batches`` without gradients.

    Returns:
        {"loss", "dice", "cases": {case id: Dice}, "example": (image, label, prob) of the first case}.
    """
    device = torch.device(device)
    net.eval()
    losses, cases, example = [], {}, None
    for batch in progress(batches, desc="validation"):
        image, label = to_tensors(batch, device, channels_last)
        with torch_utils.autocast(device, mixed_precision):
            logits = net(image)
        prob = torch.sigmoid(logits.float())
        losses.append(loss_fn(prob, label).item())
        cases.update(zip(batch["id"], dice_score(prob, label).tolist(), strict=True))
        if example is None:
            example = (batch["image"][0], batch["label"][0], prob[0].cpu().numpy())
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(list(cases.values()))),
            "cases": cases, "example": example}
