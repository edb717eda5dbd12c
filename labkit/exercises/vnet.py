"""Self-checks for Lab 1 (V-Net), in notebook order: 1 ``flip``, 2 ``dice_loss``, 3 ``dice_score``,
4 ``residual_block``, 5 ``vnet`` (forward pass), 6 ``accumulation``, 7 ``threshold``.

Each compares the student's code with an independent reference (NumPy, ``labkit.metrics``, the
block's own layers composed anew, the V-Net as a recursion over its levels, one
large-batch SGD step per group); ``ex.dice_loss.check(dice_loss)`` prints one line, never raises.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from labkit import metrics
from labkit.exercises.base import CheckFailed, Exercise


def _expect(condition, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _close(a, b, atol=1e-5) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-4))


def _need(answer, name: str, is_class: bool = False) -> None:
    _expect(callable(answer) and (isinstance(answer, type) or not is_class),
            f"pass the {'class' if is_class else 'function'} itself ({name}), not a {type(answer).__name__}")


def _tensor(value, what: str, shape: tuple | None = None) -> torch.Tensor:
    _expect(isinstance(value, torch.Tensor), f"{what} returned a {type(value).__name__}; return a tensor")
    _expect(shape in (None, tuple(value.shape)), f"{what} returned shape {tuple(value.shape)}, not {shape}")
    return value.detach().float()


def _per_case_dice(probs, labels, threshold) -> list[float]:
    return [metrics.dice(p > threshold, g) for p, g in zip(probs, labels, strict=True)]


# ------------------------------------------------------------------ 1: random flip
def _flip_case() -> dict:
    return {"id": "case", "image": np.arange(240, dtype=np.float32).reshape(2, 4, 5, 6),
            "label": (np.arange(120).reshape(1, 4, 5, 6) % 7 == 0).astype(np.float32)}


def _flipped_along(before: np.ndarray, after):
    """The array axis ``after`` is ``before`` flipped along; None: unchanged; 'other'."""
    return next((axis for axis in (None, *range(before.ndim)) if np.shape(after) == before.shape
                 and np.array_equal(after, before if axis is None else np.flip(before, axis))), "other")


def _flip_draws(flip_class, probability: float, seed: int, draws: int = 400) -> np.ndarray:
    """(draws, 2) booleans: was the image / the label flipped (one rng for all draws)."""
    transform = flip_class(["image", "label"], axis=0, probability=probability)
    rng, case = np.random.default_rng(seed), _flip_case()
    return np.array([[_flipped_along(case[key], out[key]) is not None for key in ("image", "label")]
                     for out in (transform(dict(case), rng) for _ in range(draws))])


def _check_flip_axis(flip_class, axis: int) -> None:
    case = _flip_case()
    before = {key: case[key].copy() for key in ("image", "label")}
    out = flip_class(["image", "label"], axis=axis, probability=1.0)(case, np.random.default_rng(0))
    _expect(isinstance(out, dict) and out.get("id") == "case", "return a case dict: start from dict(case)")
    _expect(all(np.array_equal(case[key], before[key]) for key in before), "your transform changed "
            "the case it was given; build a new dict (dict(case)) with new arrays (np.flip().copy())")
    image, label = (_flipped_along(before[key], out[key]) for key in ("image", "label"))
    wanted = axis + 1
    if image == wanted and label == wanted:
        return
    _expect(image != 0, "you flipped array axis 0, the channel axis (T2 and ADC swapped places); "
            "the arrays are (channels, x, y, z): spatial axis `axis` is array axis axis + 1")
    _expect(image is not None or label is not None, "with probability=1.0 nothing was flipped")
    for which, other, flipped in (("image", "label", label), ("label", "image", image)):
        _expect(flipped is not None, f"only the {which} was flipped: flip every key in self.keys, "
                f"or the {other} no longer lies on the anatomy")
    _expect(image == label or "other" in (image, label), f"the image was flipped along array axis "
            f"{image} and the label along {label}: flip both along the same axis, axis + 1")
    _expect(image == "other", f"axis={axis} flipped array axis {image}, not {wanted} (0 holds the channels)")
    raise CheckFailed("the image or the label changed in another way than a flip")


def _check_flip(flip_class) -> str:
    _need(flip_class, "RandomFlip", is_class=True)
    always, never = (_flip_draws(flip_class, p, seed=1, draws=40).any(axis=1).mean() for p in (1.0, 0.0))
    _expect(always > 0 or never < 1, "it flips at probability 0, never at 1: use rng.random() < p, not >")
    _expect(always > 0, "with probability=1.0 nothing was flipped")
    _expect(never < 1, "it flips every case, even with probability=0: the probability is ignored")
    _expect(never == 0, f"with probability=0 it flipped {never:.0%} of the cases")
    for axis in (0, 1, 2):
        _check_flip_axis(flip_class, axis)
    draws = _flip_draws(flip_class, 0.25, seed=2)
    differ, rate = int((draws[:, 0] != draws[:, 1]).sum()), draws[:, 0].mean()
    _expect(not differ, f"image and label were flipped differently in {differ} of 400 cases: draw "
            "once per case, then flip every key or none")
    _expect(abs(rate - 0.25) < 0.08, f"with probability=0.25 it flipped {rate:.0%} of the cases")
    _expect(np.array_equal(*(_flip_draws(flip_class, 0.5, seed=3, draws=40) for _ in range(2))),
            "the same seed gave different flips: draw from the rng passed in (not np.random), so a "
            "resumed run replays its augmentation")
    return "image and label flip together, along the asked axis, as often as asked, replayably"


flip = Exercise(1, "random flip", _check_flip, lab="vnet", hints=[
    "Decide once per case: flip = rng.random() < self.probability. Then flip every key, or none.",
    "The arrays are (channels, x, y, z): spatial axis self.axis is array axis self.axis + 1.",
    "case = dict(case); then for each key: case[key] = np.flip(case[key], axis=self.axis + 1).copy()",
])


# ------------------------------------------------------------------ 2: Dice loss
def _numpy_dice_loss(prob: np.ndarray, label: np.ndarray, squared: bool) -> float:
    """Mean over cases of 1 - 2 sum(p g) / (sum(p^2) + sum(g^2)) (or sum(p) + sum(g))."""
    power = 2 if squared else 1
    return float(np.mean([1 - 2 * np.sum(p * g) / (np.sum(p**power) + np.sum(g**power))
                          for p, g in zip(prob, label, strict=True)]))


def _loss(dice_loss, prob, label, what: str, **options) -> float:
    value = _tensor(dice_loss(prob, label, **options), what)
    _expect(value.numel() == 1, f"{what} returned shape {tuple(value.shape)}; expected a single "
            "number (average the per-case losses)")
    return float(value)


def _check_special_cases(dice_loss) -> None:
    label = torch.zeros((2, 1, 4, 4, 4))
    label[:, :, 1:3, 1:3, 1:3] = 1
    value = _loss(dice_loss, label.clone(), label, "dice_loss(label, label)")
    _expect(abs(value - 1) > 1e-3, "a perfect prediction gives 1.0, expected 0.0: a loss is 1 - Dice")
    _expect(abs(value) < 1e-3, f"a perfect prediction gives {value:.4f}, not 0")
    for squared in (True, False):
        empty = torch.zeros((2, 1, 4, 4, 4))
        value = _loss(dice_loss, empty.clone(), empty, "dice_loss(empty, empty)", squared=squared)
        _expect(not math.isnan(value), "an empty prediction of an empty label gives NaN (0 / 0): add eps")
        _expect(abs(value - 1) > 1e-3, "an empty prediction of an empty label gives loss 1: with eps "
                "only in the denominator its Dice is 0 / eps = 0. Add eps to the numerator too: two "
                "empty masks agree perfectly (Dice 1, loss 0), as labkit.metrics.dice says")
        _expect(abs(value) < 1e-3, f"an empty prediction of an empty label gives {value:.4f}, expected 0")


def _check_form(dice_loss, prob, label, squared: bool) -> None:
    what = f"dice_loss(prob, label, squared={squared})"
    value = _loss(dice_loss, prob, label, what, squared=squared)
    expected = _numpy_dice_loss(prob.numpy(), label.numpy(), squared)
    if abs(value - expected) < 1e-4:
        return
    other = _numpy_dice_loss(prob.numpy(), label.numpy(), not squared)
    _expect(abs(value - other) > 1e-4, f"with squared={squared} your denominator uses the other form; "
            f"this one divides by {'sum(p**2) + sum(g**2)' if squared else 'sum(p) + sum(g)'}")
    pooled = _numpy_dice_loss(prob.numpy().reshape(1, -1), label.numpy().reshape(1, -1), squared)
    _expect(abs(value - pooled) > 1e-4, "you pooled the whole batch into one Dice; compute one Dice "
            "per case (sum over every axis but the first) and then average")
    _expect(abs(value - (1 - expected)) > 1e-4, f"{what} returned the Dice score; a loss is 1 - Dice")
    raise CheckFailed(f"{what} gives {value:.4f} on 4 random cases, expected {expected:.4f}")


def _check_dice_loss(dice_loss) -> str:
    _need(dice_loss, "dice_loss")
    _check_special_cases(dice_loss)
    generator = torch.Generator().manual_seed(0)
    prob = torch.rand((4, 1, 6, 5, 4), generator=generator)
    label = (torch.rand((4, 1, 6, 5, 4), generator=generator) > 0.6).float()
    label[0], label[0, 0, 0, 0, 0] = 0, 1  # an almost empty truth makes pooling the batch visible
    for squared in (True, False):
        _check_form(dice_loss, prob, label, squared)
    prob.requires_grad_(True)
    loss = dice_loss(prob, label, squared=True)
    _expect(loss.grad_fn is not None, "no gradient flows through your loss; keep to torch operations")
    return "both forms match NumPy on 4 cases, two empty masks give 0, and gradients flow"


dice_loss = Exercise(2, "Dice loss", _check_dice_loss, lab="vnet", hints=[
    "Sum over every axis except the batch axis: dims = tuple(range(1, prob.ndim)).",
    "overlap = (prob * label).sum(dims); the squared form divides 2 * overlap by (prob ** 2).sum(dims)"
    " + (label ** 2).sum(dims), the plain form by prob.sum(dims) + label.sum(dims).",
    "dice = (2 * overlap + eps) / (total + eps): eps above and below, so two empty masks give Dice 1."
    " Then return (1 - dice).mean().",
])


# ------------------------------------------------------------------ 3: Dice score
def _check_dice_score(dice_score) -> str:
    _need(dice_score, "dice_score")
    generator = torch.Generator().manual_seed(5)
    prob = torch.rand((4, 1, 6, 5, 4), generator=generator)
    label = (torch.rand((4, 1, 6, 5, 4), generator=generator) > 0.6).float()
    label[3], prob[3] = 0, 0.1 * prob[3]  # case 3: nothing to find, nothing found
    for threshold in (0.5, 0.3):
        got = _tensor(dice_score(prob, label, threshold=threshold), "dice_score", (4,))
        expected = torch.tensor(_per_case_dice(prob.numpy(), label.numpy(), threshold))
        if _close(got, expected):
            continue
        soft = 2 * (prob * label).sum((1, 2, 3, 4)) / (prob + label).sum((1, 2, 3, 4))
        _expect(not _close(got[:3], soft[:3]), "you used the probabilities themselves; a Dice score "
                "compares masks: threshold first, pred = (prob > threshold).float()")
        _expect(not _close(got, _per_case_dice(prob.numpy(), label.numpy(), 0.5)),
                "with threshold=0.3 you get the Dice at 0.5: use the threshold argument")
        _expect(not _close(got, 1 - expected), "you returned 1 - Dice; the score is the Dice itself")
        _expect(not _close(got[:3], expected[:3]), f"two empty masks give {float(got[3]):.3f}; they "
                "agree perfectly: Dice 1 (labkit.metrics.dice); avoid 0 / 0 with torch.where")
        _expect(not _close(got, got[:1].expand(4)), "every case got the same score: one Dice per case, "
                "not one for the pooled batch")
        raise CheckFailed(f"at threshold {threshold}: {got.numpy().round(3)}, not {expected.numpy().round(3)}")
    return "one hard Dice per case at any threshold; two empty masks score 1 (as labkit.metrics.dice)"


dice_score = Exercise(3, "Dice score", _check_dice_score, lab="vnet", hints=[
    "Threshold first: pred = (prob > threshold).float(). Then the Dice of pred and label, per case.",
    "overlap = (pred * label).sum(dims), total = pred.sum(dims) + label.sum(dims), dims = (1, 2, ...)",
    "torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total)) gives 1 for "
    "two empty masks without ever dividing by 0.",
])


# ------------------------------------------------------------------ 4: residual block
def _layers(module) -> list:
    return list(module) if isinstance(module, nn.Sequential) else [module]


def _chain(layers, x: torch.Tensor) -> torch.Tensor:
    """The layers one after another: the reference composition, from the block's own layers."""
    for layer in layers:
        x = layer(x)
    return x


def _check_block_layers(block, n_stages: int, cin: int, cout: int, kind: str) -> None:
    _expect(all(isinstance(getattr(block, name, None), nn.Module) for name in ("stages", "skip",
            "activation")), "build self.stages, self.skip, self.activation in __init__")
    layers = _layers(block.stages)
    convolutions = [layer for layer in layers if isinstance(layer, nn.Conv3d)]
    _expect(len(convolutions) == n_stages, f"ResidualBlock({n_stages}, {cin}, {cout}) has "
            f"{len(convolutions)} convolutions in self.stages, expected {n_stages} (one per stage)")
    for stage, conv in enumerate(convolutions, 1):
        _expect(conv.kernel_size != (5, 5, 5), "5x5x5 kernels are the paper's; this lab uses 3x3x3")
        _expect(conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1),
                f"stage {stage}: use kernel_size=3 with padding=1, which keeps the size")
        wanted = cin if stage == 1 else cout
        _expect((conv.in_channels, conv.out_channels) == (wanted, cout), f"stage {stage} maps "
                f"{conv.in_channels} -> {conv.out_channels} channels, expected {wanted} -> {cout} "
                "(stage 1 takes in_channels, the later ones what the stage before made)")
    norm = {"groupnorm": nn.GroupNorm, "batchnorm": nn.BatchNorm3d}.get(kind, ())
    norms = [layer for layer in layers if isinstance(layer, norm)]
    _expect(kind == "none" or len(norms) == n_stages, f"with normalization={kind!r} follow each "
            "convolution with make_norm(normalization, out_channels)")
    _expect(not isinstance(layers[-1], nn.ReLU), "self.stages ends with a ReLU: the activation "
            "comes after the sum (ResNet, V-Net); before it, the residual could only add, never subtract")
    _expect(sum(isinstance(layer, nn.ReLU) for layer in layers) == n_stages - 1,
            f"{n_stages} stages need {n_stages - 1} ReLU(s) between them (none at the end)")
    _expect(cin == cout or any(isinstance(layer, nn.Conv3d) and layer.kernel_size == (1, 1, 1)
                               for layer in _layers(block.skip)), f"from {cin} to {cout} channels "
            "the skip needs a 1x1x1 convolution (and a norm); nn.Identity() only when they match")


def _check_block_forward(block, cin: int, cout: int) -> None:
    with torch.no_grad():
        x = torch.randn((2, cin, 6, 6, 6), generator=torch.Generator().manual_seed(cin + cout))
        out = _tensor(block.eval()(x.clone()), "forward", (2, cout, 6, 6, 6))
        stages, skip = _chain(_layers(block.stages), x.clone()), _chain(_layers(block.skip), x.clone())
    if _close(out, torch.relu(stages + skip)):
        return
    _expect(not _close(out, stages + skip), "negative outputs: apply self.activation after the sum")
    _expect(not _close(out, torch.relu(stages)), "the skip is missing: add self.skip(x) to the stages")
    _expect(not _close(out, torch.relu(skip)), "your block ignores its convolutions: add self.stages(x)")
    raise CheckFailed("forward should return activation(stages(x) + skip(x)); yours differs")


def _check_residual_block(block_class) -> str:
    _need(block_class, "ResidualBlock", is_class=True)
    for n_stages, cin, cout, kind in ((2, 8, 8, "groupnorm"), (3, 2, 16, "groupnorm"),
                                      (1, 4, 8, "batchnorm"), (2, 8, 8, "none")):
        block = block_class(n_stages, cin, cout, kind)
        _check_block_layers(block, n_stages, cin, cout, kind)
        _check_block_forward(block, cin, cout)
    return "layers as specified, and forward = ReLU(stages(x) + skip(x)) for 4 shapes and norms"


residual_block = Exercise(4, "residual block", _check_residual_block, lab="vnet", hints=[
    "Each stage: a 3x3x3 nn.Conv3d (padding=1), then make_norm(normalization, out_channels); a ReLU "
    "between stages, none after the last. The first stage takes in_channels, the others out_channels.",
    "self.skip: nn.Identity() if in_channels == out_channels, else nn.Sequential(nn.Conv3d(in_channels,"
    " out_channels, kernel_size=1), make_norm(normalization, out_channels)).",
    "forward: return self.activation(self.stages(x) + self.skip(x)).",
])


# ------------------------------------------------------------------ 5: the V-Net's forward pass
def reference_forward(net, x):
    """The V-Net as a recursion over its levels, with ``net``'s modules: level k encodes, hands
    its result down (level k + 1, or the bottom), brings the answer up and adds what it kept.

    Returns ``(logits, kept, fused)``: per level from the top, the encoder block's output and the
    decoder block's input."""
    depth = len(net.encoder)
    kept, fused = [None] * depth, [None] * depth

    def level(k, below):
        kept[k] = net.encoder[k](below)
        down = net.down[k](kept[k])
        inner = net.bottom(down) if k == depth - 1 else level(k + 1, down)
        fused[k] = net.up[depth - 1 - k](inner) + kept[k]
        return net.decoder[depth - 1 - k](fused[k])

    return net.head(level(0, x)), kept, fused


def _recorded_run(net, x):
    """The student's forward pass, each level's encoder output and decoder input recorded."""
    depth, seen = len(net.encoder), {"encoder": {}, "decoder": {}, "bottom": False}
    hooks = [net.bottom.register_forward_hook(lambda *_: seen.__setitem__("bottom", True))]
    for k in range(depth):
        hooks.append(net.encoder[k].register_forward_hook(
            lambda module, inputs, output, k=k: seen["encoder"].__setitem__(k, output.clone())))
        hooks.append(net.decoder[depth - 1 - k].register_forward_pre_hook(
            lambda module, inputs, k=k: seen["decoder"].__setitem__(k, inputs[0].clone())))
    try:
        return net(x), seen
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        _expect("size of tensor" not in first, f"tensors of different sizes were added ({first}): keep"
                " each level's output before its down-convolution; going up, pop() the deepest first")
        _expect("channels" not in first, f"a block got the wrong number of channels ({first}): going "
                "up, up(x) + kept (a sum keeps the channels; torch.cat doubles them), then the block")
        raise
    finally:
        for hook in hooks:
            hook.remove()


def _check_vnet_once(vnet_class, x, **options) -> None:
    torch.manual_seed(0)
    net = vnet_class(2, 1, 4, **options).eval()
    with torch.no_grad():
        expected, kept, fused = reference_forward(net, x.clone())
        out, seen = _recorded_run(net, x.clone())
    out = _tensor(out, "forward")
    _expect(out.shape == expected.shape, f"your output has shape {tuple(out.shape)}: return self.head(x)")
    if _close(out, expected):
        return
    _expect(not _close(out, torch.sigmoid(expected)), "return the logits: the loss applies the sigmoid")
    for k in range(len(kept)):
        _expect(k in seen["encoder"] and _close(seen["encoder"][k], kept[k]), f"encoder level {k + 1}"
                " differs: each level runs its encoder block on the previous level's down-convolution")
    _expect(seen["bottom"], "self.bottom never ran: it comes after the last down-convolution")
    for k in reversed(range(len(kept))):
        _expect(k in seen["decoder"], f"the decoder block of level {k + 1} never ran")
        _expect(not _close(seen["decoder"][k], fused[k] - kept[k]), f"going up, level {k + 1} got "
                "up(x) alone: add the features kept at that level (the long skip)")
        _expect(_close(seen["decoder"][k], fused[k]), f"going up, level {k + 1}'s block should get "
                "up(x) + the features its encoder kept; yours gets something else")
    raise CheckFailed("every level matches but the output does not: return self.head(x)")


def _check_vnet(vnet_class) -> str:
    _need(vnet_class, "VNet", is_class=True)
    generator = torch.Generator().manual_seed(0)
    _check_vnet_once(vnet_class, torch.randn((2, 2, 16, 32, 16), generator=generator),
                     normalization="groupnorm")
    _check_vnet_once(vnet_class, torch.randn((1, 2, 8, 4, 12), generator=generator),
                     normalization="none", down_stages=(1, 1), bottom_stages=1, up_stages=(2, 1))
    return "matches the recursive reference, same weights, level by level, for 5 and 3 levels"


vnet = Exercise(5, "V-Net forward pass", _check_vnet, lab="vnet", hints=[
    "Going down, each level: x = block(x); keep x; x = down(x). Then x = self.bottom(x).",
    "The kept features are a stack: append going down, pop() going up (the deepest comes back "
    "first). Going up, each level: x = up(x) + kept.pop(); x = block(x).",
    "zip(self.encoder, self.down), then zip(self.up, self.decoder); return self.head(x) (logits)",
])


# ------------------------------------------------------------------ 6: gradient accumulation
def _tiny_problem(n_batches: int):
    """A 1x1x1 convolution and ``n_batches`` one-case batches (dicts like the BatchIterator's)."""
    torch.manual_seed(3)
    net, generator = nn.Conv3d(2, 1, 1), np.random.default_rng(3)
    return net, [{"id": [f"case_{index}"],
                  "image": generator.normal(size=(1, 2, 2, 2, 2)).astype(np.float32),
                  "label": (generator.random(size=(1, 1, 2, 2, 2)) > 0.5).astype(np.float32)}
                 for index in range(n_batches)]


def _squared_error(prob, label):
    return ((prob - label) ** 2).mean()


def _weights(net) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _reference_run(n_batches: int, accumulate: int, last_divisor: int | None = None):
    """One SGD step per group of batches (the last may be shorter) on their concatenation, and the
    mean batch loss; ``last_divisor``: the last group's losses divided by it, not its size."""
    net, batches = _tiny_problem(n_batches)
    optimizer, losses = torch.optim.SGD(net.parameters(), lr=0.5), []
    for start in range(0, n_batches, accumulate):
        group = batches[start:start + accumulate]
        image, label = (torch.from_numpy(np.concatenate([b[key] for b in group])) for key in ("image", "label"))
        prob = torch.sigmoid(net(image))
        losses += [float(_squared_error(prob[i], label[i])) for i in range(len(group))]
        last = last_divisor and start + accumulate >= n_batches
        optimizer.zero_grad()
        ((len(group) / last_divisor if last else 1.0) * _squared_error(prob, label)).backward()
        optimizer.step()
    return _weights(net), float(np.mean(losses))


def _check_accumulation_once(train_one_epoch, n_batches: int, accumulate: int) -> None:
    net, batches = _tiny_problem(n_batches)
    start, steps = _weights(net), []
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    result = train_one_epoch(net, batches, optimizer, _squared_error, device="cpu", accumulate=accumulate)
    weights, groups, partial = _weights(net), math.ceil(n_batches / accumulate), n_batches % accumulate
    what = f"for {n_batches} batches with accumulate={accumulate}"
    _expect(not partial or len(steps) != n_batches // accumulate, f"{what} the last {partial} "
            "batch(es) never reached a step; also step after the epoch's last batch")
    _expect(len(steps) == groups, f"{what} you called optimizer.step() {len(steps)} times, not {groups}")
    reference, mean_loss = _reference_run(n_batches, accumulate)
    if not _close(weights, reference):
        ratio = float((weights - start).norm() / (reference - start).norm().clamp_min(1e-12))
        _expect(groups > 1 or abs(ratio - accumulate) > 0.05 * accumulate, f"your update is "
                f"{ratio:.1f} times the large-batch one; divide each loss by accumulate before backward()")
        _expect(not partial or not _close(weights, _reference_run(n_batches, accumulate, accumulate)[0]),
                f"{what} the last group holds {partial} batch(es), but you divided their losses by "
                f"{accumulate}, so its step is too small: divide by the number of batches in the group")
        _expect(groups == 1, f"after {groups} steps the weights differ from one large-batch step per "
                "group; reset the gradients after each step (optimizer.zero_grad())")
        raise CheckFailed(f"{what} the weights differ from one SGD step on the same cases as one batch")
    logged = result.get("loss", math.nan) if isinstance(result, dict) else math.nan
    _expect(accumulate == 1 or abs(logged * accumulate - mean_loss) > 1e-5, "the logged loss is the "
            "loss divided by accumulate: divide only what goes into backward(); log the loss itself")
    _expect(abs(logged - mean_loss) < 1e-5, f"{what} the returned 'loss' should be the mean of the "
            f"batches' losses, {mean_loss:.5f}; got {logged}")


def _check_accumulation(train_one_epoch) -> str:
    _need(train_one_epoch, "train_one_epoch")
    for n_batches, accumulate in ((4, 4), (8, 4), (6, 4), (3, 1)):
        _check_accumulation_once(train_one_epoch, n_batches, accumulate)
    return "each step equals one large-batch step on its group (a short last group too); loss logged undivided"


accumulation = Exercise(6, "gradient accumulation", _check_accumulation, lab="vnet", hints=[
    "backward() adds to .grad: step and clear at the end of each group, and after the last batch.",
    "Divide what goes into backward() by the number of batches in the group: accumulate, or fewer "
    "for the last group: group = min(accumulate, len(batches) - index // accumulate * accumulate).",
    "scaler.scale(loss / group).backward(); then if (index + 1) % accumulate == 0 or index + 1 == "
    "len(batches): scaler.step(optimizer); scaler.update(); optimizer.zero_grad().",
])


# ------------------------------------------------------------------ 7: choosing the threshold
def _threshold_cases():
    """A large gland with 500 false positives at 0.45 and a small gland found only at 0.35: the
    mean per-case Dice prefers 0.3, the Dice of all voxels pooled 0.5."""
    large_prob, large_label = np.zeros((20, 20, 10), np.float32), np.zeros((20, 20, 10), np.float32)
    large_label[:10, :10], large_prob[:10, :10], large_prob[10:15, :10] = 1, 0.6, 0.45
    small_prob, small_label = np.zeros((8, 8, 6), np.float32), np.zeros((8, 8, 6), np.float32)
    small_label[:5, :3, :2], small_prob[:5, :3, :2] = 1, 0.35
    return [large_prob, small_prob], [large_label, small_label]


def _check_threshold(choose_threshold) -> str:
    _need(choose_threshold, "choose_threshold")
    (probs, labels), thresholds = _threshold_cases(), [0.3, 0.4, 0.5]
    answer = choose_threshold(probs, labels, thresholds)
    _expect(isinstance(answer, tuple) and len(answer) == 2, "return (best threshold, mean Dice per threshold)")
    best, scores = answer[0], np.asarray(answer[1], dtype=float).ravel()
    expected = [np.mean(_per_case_dice(probs, labels, t)) for t in thresholds]
    pooled = [metrics.dice(np.concatenate([(p > t).ravel() for p in probs]),
                           np.concatenate([g.ravel() for g in labels])) for t in thresholds]
    _expect(scores.shape == (3,), f"return one mean Dice per threshold (3), got {scores.shape}")
    if not np.allclose(scores, expected, atol=1e-6):
        _expect(not np.allclose(scores, pooled, atol=1e-6), "you pooled every case's voxels into one "
                "Dice: a large gland then outweighs a small one; average the Dice of each case")
        _expect(np.ptp(scores) > 1e-9, "every threshold gave the same score: use prob > t")
        raise CheckFailed(f"the mean Dice per threshold should be {np.round(expected, 3).tolist()}, "
                          f"yours is {np.round(scores, 3).tolist()}")
    _expect(not isinstance(best, (int, np.integer)) or isinstance(best, bool), f"you returned {best},"
            " an index; return the threshold itself, thresholds[index]")
    _expect(best != thresholds[int(np.argmin(expected))], "you chose the lowest Dice; take the highest")
    _expect(best == thresholds[int(np.argmax(expected))], f"right scores, but you chose {best}")
    return "picks the threshold with the best mean per-case Dice"


threshold = Exercise(7, "threshold on validation", _check_threshold, lab="vnet", hints=[
    "For each threshold t: the Dice of every case, metrics.dice(prob > t, label), then their mean.",
    "Keep the cases apart (they differ in size): loop over zip(probs, labels).",
    "best = thresholds[int(np.argmax(scores))]; return best, scores",
])

__all__ = ["accumulation", "dice_loss", "dice_score", "flip", "reference_forward", "residual_block",
           "threshold", "vnet"]
