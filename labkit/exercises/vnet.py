"""Self-checks for Lab 1 (V-Net, PyTorch): ``dice_loss``, ``residual_block``, ``accumulation``.

Each check compares the student's code with analytic values or with an independent
reference (plain NumPy, or one large-batch SGD step), prints one stable line and never
raises into the notebook.

Example:
    >>> from labkit.exercises import vnet as ex
    >>> ex.dice_loss.check(dice_loss)          # doctest: +SKIP
    Exercise 1 (Dice loss): correct - both forms match NumPy on 4 cases
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from labkit.exercises.base import CheckFailed, Exercise

_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------
# Exercise 1: Dice loss
# --------------------------------------------------------------------------------------
def _numpy_dice_loss(prob: np.ndarray, label: np.ndarray, squared: bool) -> float:
    """Reference: mean over cases of 1 - 2|P.G| / (|P|^2 + |G|^2) (or |P| + |G|)."""
    losses = []
    for case_prob, case_label in zip(prob, label, strict=True):
        overlap = float(np.sum(case_prob * case_label))
        if squared:
            total = float(np.sum(case_prob**2) + np.sum(case_label**2))
        else:
            total = float(np.sum(case_prob) + np.sum(case_label))
        losses.append(1.0 - 2.0 * overlap / total)
    return float(np.mean(losses))


def _as_float(value, what: str) -> float:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} returned a {type(value).__name__}; return a torch tensor "
                          "(so that gradients can flow back through it)")
    if value.numel() != 1:
        raise CheckFailed(f"{what} returned a tensor of shape {tuple(value.shape)}; expected a "
                          "single number (average the per-case losses with .mean())")
    return float(value.detach())


def _dice_examples() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    prob = torch.rand((4, 1, 6, 5, 4), generator=generator)
    label = (torch.rand((4, 1, 6, 5, 4), generator=generator) > 0.6).float()
    label[0] = 0  # one case with an almost empty truth makes batch pooling visible
    label[0, 0, 0, 0, 0] = 1
    return prob, label


def _check_perfect(dice_loss) -> None:
    label = torch.zeros((2, 1, 4, 4, 4))
    label[:, :, 1:3, 1:3, 1:3] = 1
    value = _as_float(dice_loss(label.clone(), label), "dice_loss(label, label)")
    if abs(value - 1.0) < 1e-3:
        raise CheckFailed("a perfect prediction gives 1.0, expected 0.0 - you returned the Dice "
                          "score; a loss is 1 - Dice")
    if abs(value) > 1e-3:
        raise CheckFailed(f"a perfect prediction gives {value:.4f}, expected 0.0")


def _check_form(dice_loss, prob, label, squared: bool) -> None:
    name = "squared" if squared else "plain"
    what = f"dice_loss(prob, label, squared={squared})"
    value = _as_float(dice_loss(prob, label, squared=squared), what)
    expected = _numpy_dice_loss(prob.numpy(), label.numpy(), squared)
    if abs(value - expected) <= _TOLERANCE:
        return
    other = _numpy_dice_loss(prob.numpy(), label.numpy(), not squared)
    pooled = _numpy_dice_loss(prob.numpy().reshape(1, -1), label.numpy().reshape(1, -1), squared)
    if abs(value - other) <= _TOLERANCE:
        wanted = "sum(p**2) + sum(g**2)" if squared else "sum(p) + sum(g)"
        raise CheckFailed(f"with squared={squared} your denominator uses the other form; the "
                          f"{name} form divides by {wanted}")
    if abs(value - pooled) <= _TOLERANCE:
        raise CheckFailed("you pooled the whole batch into one Dice; compute one Dice per case "
                          "(sum over every axis but the first) and then average")
    if abs(value - (1 - expected)) <= _TOLERANCE:
        raise CheckFailed(f"{what} returned the Dice score; a loss is 1 - Dice")
    raise CheckFailed(f"{what} gives {value:.4f} on 4 random cases, expected {expected:.4f}")


def _check_gradient(dice_loss, prob, label) -> None:
    prob = prob.clone().requires_grad_(True)
    loss = dice_loss(prob, label, squared=True)
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise CheckFailed("no gradient flows through your loss; keep to torch operations (no "
                          ".item(), .numpy() or .detach() inside)")
    loss.backward()
    # Analytic gradient of 1 - 2 I / U with I = sum(p g), U = sum(p^2) + sum(g^2), per case.
    probs, labels = prob.detach(), label
    dims = tuple(range(1, probs.ndim))
    overlap = (probs * labels).sum(dims, keepdim=True)
    total = (probs**2).sum(dims, keepdim=True) + (labels**2).sum(dims, keepdim=True)
    expected = -(2 * labels * total - 4 * probs * overlap) / total**2 / probs.shape[0]
    if not torch.allclose(prob.grad, expected, atol=1e-5, rtol=1e-3):
        raise CheckFailed("the value is right but the gradient is not; is part of the loss computed "
                          "outside torch (e.g. with .item())?")


def _check_dice_loss(dice_loss) -> str:
    if not callable(dice_loss):
        raise CheckFailed(f"pass your function itself (dice_loss), not a {type(dice_loss).__name__}")
    _check_perfect(dice_loss)
    prob, label = _dice_examples()
    _check_form(dice_loss, prob, label, squared=True)
    _check_form(dice_loss, prob, label, squared=False)
    _check_gradient(dice_loss, prob, label)
    return "both forms match NumPy on 4 cases, and so does the gradient"


dice_loss = Exercise(
    1, "Dice loss", _check_dice_loss,
    hints=[
        "Sum over every axis except the batch axis: dims = tuple(range(1, prob.ndim)).",
        "overlap = (prob * label).sum(dims); the squared form divides 2 * overlap by "
        "(prob ** 2).sum(dims) + (label ** 2).sum(dims), the plain form by prob.sum(dims) + label.sum(dims).",
        "Add eps to numerator and denominator, then return (1 - dice).mean().",
    ],
    lab="vnet",
)


# --------------------------------------------------------------------------------------
# Exercise 2: the residual block's forward pass
# --------------------------------------------------------------------------------------
def _zero_last_convolution(block: nn.Module) -> None:
    """Make ``block.stages`` output zeros: zero its last convolution and any later affine norm."""
    convolutions = [layer for layer in block.stages.modules() if isinstance(layer, nn.Conv3d)]
    if not convolutions:
        raise CheckFailed("block.stages holds no nn.Conv3d; keep the __init__ given in the cell")
    with torch.no_grad():
        convolutions[-1].weight.zero_()
        if convolutions[-1].bias is not None:
            convolutions[-1].bias.zero_()
        for layer in block.stages.modules():
            if isinstance(layer, (nn.GroupNorm, nn.BatchNorm3d)) and layer.bias is not None:
                layer.bias.zero_()


def _run_block(block: nn.Module, x: torch.Tensor, expected_channels: int) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = block(x.clone())
    except RuntimeError as error:
        raise CheckFailed(f"forward failed on a block from {x.shape[1]} to {expected_channels} "
                          f"channels ({str(error).splitlines()[0]}); add self.skip(x), which has the right number of "
                          "channels, rather than x itself") from None
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"forward returned a {type(out).__name__}; return a tensor")
    if out.shape[1] != expected_channels:
        raise CheckFailed(f"your output has {out.shape[1]} channels, expected {expected_channels}")
    if out.shape != (x.shape[0], expected_channels, *x.shape[2:]):
        raise CheckFailed(f"your output has shape {tuple(out.shape)}, expected "
                          f"{(x.shape[0], expected_channels, *x.shape[2:])}")
    return out


def _check_skip_only(block_class, in_channels: int, out_channels: int, x: torch.Tensor) -> None:
    """With the convolution stages switched off, the block must return relu(skip(x))."""
    block = block_class(2, in_channels, out_channels, "groupnorm").eval()
    _zero_last_convolution(block)
    out = _run_block(block, x, out_channels)
    with torch.no_grad():
        expected = torch.relu(block.skip(x.clone()))
    if torch.allclose(out, expected, atol=1e-5):
        return
    if float(out.abs().max()) < 1e-6:
        raise CheckFailed("with the convolutions switched off your block returns zeros; it should "
                          "still pass its input through the skip - add self.skip(x)")
    if in_channels == out_channels and torch.allclose(out, x, atol=1e-5):
        raise CheckFailed("with the convolutions switched off your block returns x unchanged, "
                          "expected relu(x): apply self.activation after the sum")
    raise CheckFailed("with the convolutions switched off the output should be "
                      "relu(skip(x)), and it is not")


def _check_full(block_class, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    block = block_class(2, x.shape[1], x.shape[1], "groupnorm").eval()
    out = _run_block(block, x, x.shape[1])
    if torch.allclose(out, torch.relu(x), atol=1e-5):
        raise CheckFailed("your block ignores its convolutions; add self.stages(x) to the skip")
    if float(out.min()) < 0:
        raise CheckFailed("your output has negative values; finish with self.activation (ReLU)")
    with torch.no_grad():
        expected = torch.relu(block.stages(x.clone()) + x)
    if not torch.allclose(out, expected, atol=1e-5):
        raise CheckFailed("the output should be relu(stages(x) + x); yours differs - is the "
                          "activation applied once, after the sum?")


def _check_residual_block(block_class) -> str:
    if not isinstance(block_class, type) or not issubclass(block_class, nn.Module):
        raise CheckFailed("pass the class itself (ResidualBlock), not an instance or a function")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 8, 4, 4, 4), generator=generator)
    _check_skip_only(block_class, 8, 8, x)
    _check_skip_only(block_class, 2, 8, torch.randn((2, 2, 4, 4, 4), generator=generator))
    _check_full(block_class, x)
    return "identity and 1x1 projection skips both behave"


residual_block = Exercise(
    2, "residual block", _check_residual_block,
    hints=[
        "Two paths leave x: the convolution stages and the skip. They meet in a sum.",
        "self.stages(x) and self.skip(x) have the same shape; add them.",
        "return self.activation(self.stages(x) + self.skip(x))",
    ],
    lab="vnet",
)


# --------------------------------------------------------------------------------------
# Exercise 3: gradient accumulation
# --------------------------------------------------------------------------------------
def _tiny_problem(n_batches: int):
    """A 1x1x1 convolution net and n_batches batches of 1 case (dicts like the BatchIterator's)."""
    torch.manual_seed(3)
    net = nn.Conv3d(2, 1, 1)
    generator = np.random.default_rng(3)
    batches = [{"id": [f"case_{index}"],
                "image": generator.normal(size=(1, 2, 2, 2, 2)).astype(np.float32),
                "label": (generator.random(size=(1, 1, 2, 2, 2)) > 0.5).astype(np.float32)}
               for index in range(n_batches)]
    return net, batches


def _mean_squared_error(prob, label):
    return ((prob - label) ** 2).mean()


def _student_run(train_one_epoch, n_batches: int, accumulate: int):
    net, batches = _tiny_problem(n_batches)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    train_one_epoch(net, batches, optimizer, _mean_squared_error, device="cpu",
                    accumulate=accumulate)
    return torch.cat([p.detach().flatten() for p in net.parameters()]), len(steps)


def _reference_run(n_batches: int, accumulate: int) -> torch.Tensor:
    """The peer: one SGD step per group of ``accumulate`` cases, on their concatenated batch."""
    net, batches = _tiny_problem(n_batches)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for start in range(0, n_batches, accumulate):
        group = batches[start:start + accumulate]
        image = torch.from_numpy(np.concatenate([batch["image"] for batch in group]))
        label = torch.from_numpy(np.concatenate([batch["label"] for batch in group]))
        optimizer.zero_grad()
        _mean_squared_error(torch.sigmoid(net(image)), label).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _update_ratio(student: torch.Tensor, reference: torch.Tensor, n_batches: int) -> float:
    start, _ = _tiny_problem(n_batches)
    start = torch.cat([p.detach().flatten() for p in start.parameters()])
    return float((student - start).norm() / (reference - start).norm().clamp_min(1e-12))


def _check_accumulation(train_one_epoch) -> str:
    if not callable(train_one_epoch):
        raise CheckFailed("pass your function itself (train_one_epoch)")
    for n_batches, accumulate in ((4, 4), (8, 4), (3, 1)):
        weights, steps = _student_run(train_one_epoch, n_batches, accumulate)
        expected_steps = n_batches // accumulate
        if steps != expected_steps:
            raise CheckFailed(f"for {n_batches} batches with accumulate={accumulate} your code "
                              f"called optimizer.step() {steps} times, expected {expected_steps}")
        reference = _reference_run(n_batches, accumulate)
        if torch.allclose(weights, reference, atol=1e-5):
            continue
        ratio = _update_ratio(weights, reference, n_batches)
        if steps == 1 and abs(ratio - accumulate) < 0.05 * accumulate:
            raise CheckFailed(f"your update is {ratio:.1f} times the large-batch one; divide each "
                              f"loss by accumulate ({accumulate}) before backward()")
        if steps > 1:
            raise CheckFailed(f"after {steps} optimiser steps the weights differ from one large-batch "
                              "step per group; reset the gradients after each step "
                              "(optimizer.zero_grad())")
        raise CheckFailed(f"after {n_batches} batches with accumulate={accumulate} the weights "
                          "differ from one SGD step on the same cases as one large batch")
    return "accumulate=4 matches one step on a batch 4 times larger"


accumulation = Exercise(
    3, "gradient accumulation", _check_accumulation,
    hints=[
        "backward() adds to .grad; it never clears it. Step and clear only every `accumulate` batches.",
        "Divide the loss by accumulate so the summed gradients equal the mean over the large batch.",
        "loss = loss_fn(prob, label) / accumulate; scaler.scale(loss).backward(); then if "
        "(index + 1) % accumulate == 0: scaler.step(optimizer); scaler.update(); "
        "optimizer.zero_grad()",
    ],
    lab="vnet",
)

__all__ = ["accumulation", "dice_loss", "residual_block"]
