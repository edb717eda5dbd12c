"""Lab 1 self-checks: a right answer passes, typical wrong answers get their message."""

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from labkit.exercises import vnet as ex  # noqa: E402

pytestmark = pytest.mark.torch


def _line(capsys, exercise, *args):
    passed = exercise.check(*args)
    output = capsys.readouterr().out
    assert output.count("\n") == 1, output  # exactly one printed line
    return passed, output


# ---------------------------------------------------------------- Exercise 1: Dice loss
def _dice(prob, label, squared=True, eps=1e-5, *, pooled=False, score=False, swap=False):
    dims = tuple(range(0 if pooled else 1, prob.ndim))
    overlap = (prob * label).sum(dims)
    use_squares = squared != swap
    total = ((prob**2).sum(dims) + (label**2).sum(dims)) if use_squares else (prob.sum(dims) + label.sum(dims))
    dice = (2 * overlap + eps) / (total + eps)
    return dice.mean() if score else (1 - dice).mean()


def test_dice_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.dice_loss, _dice)
    assert passed and "correct" in output


def test_dice_seed_form_with_eps_only_below_passes(capsys):
    def seed_style(prob, label, squared=True):
        dims = tuple(range(1, prob.ndim))
        total = (prob**2).sum(dims) + (label**2).sum(dims) if squared else prob.sum(dims) + label.sum(dims)
        return (1 - 2 * (prob * label).sum(dims) / (total + 1e-5)).mean()

    assert _line(capsys, ex.dice_loss, seed_style)[0]


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")
@pytest.mark.parametrize("wrong, message", [
    (lambda p, g, squared=True: _dice(p, g, squared, score=True), "you returned the Dice score"),
    (lambda p, g, squared=True: _dice(p, g, squared, swap=True), "uses the other form"),
    (lambda p, g, squared=True: _dice(p, g, squared, pooled=True), "pooled the whole batch"),
    (lambda p, g, squared=True: 1 - 2 * (p * g).sum((1, 2, 3, 4)) / ((p**2).sum((1, 2, 3, 4)) + (g**2).sum((1, 2, 3, 4))),
     "expected a single number"),
    (lambda p, g, squared=True: float(_dice(p, g, squared)), "returned a float"),
    (lambda p, g, squared=True: torch.tensor(float(_dice(p, g, squared))), "no gradient flows"),
])
def test_dice_wrong_answers_get_their_message(capsys, wrong, message):
    passed, output = _line(capsys, ex.dice_loss, wrong)
    assert not passed
    assert message in output


def test_dice_crash_is_reported_not_raised(capsys):
    def crashes(prob, label, squared=True):
        raise KeyError("oops")

    passed, output = _line(capsys, ex.dice_loss, crashes)
    assert not passed and "KeyError" in output


def test_dice_not_implemented(capsys):
    def stub(prob, label, squared=True):
        raise NotImplementedError

    passed, output = _line(capsys, ex.dice_loss, stub)
    assert not passed and "not implemented yet" in output


# ---------------------------------------------------------------- Exercise 2: residual block
class _Block(nn.Module):
    """The block's __init__ as given in the notebook; subclasses change only forward."""

    def __init__(self, n_stages, in_channels, out_channels, normalization="groupnorm"):
        super().__init__()
        layers = []
        for stage in range(n_stages):
            layers += [nn.Conv3d(in_channels if stage == 0 else out_channels, out_channels, 3, padding=1),
                       nn.GroupNorm(math.gcd(out_channels, 8), out_channels)]
            if stage < n_stages - 1:
                layers.append(nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*layers)
        self.skip = (nn.Identity() if in_channels == out_channels else
                     nn.Sequential(nn.Conv3d(in_channels, out_channels, 1), nn.GroupNorm(math.gcd(out_channels, 8), out_channels)))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.stages(x) + self.skip(x))


class _NoSkip(_Block):
    def forward(self, x):
        return self.activation(self.stages(x))


class _ActivationBeforeSum(_Block):
    def forward(self, x):
        return self.activation(self.stages(x)) + self.skip(x)


class _RawInputSkip(_Block):
    def forward(self, x):
        return self.activation(self.stages(x) + x)


class _NoActivation(_Block):
    def forward(self, x):
        return self.stages(x) + self.skip(x)


class _SkipOnly(_Block):
    def forward(self, x):
        return self.activation(self.skip(x))


class _HalfChannels(_Block):
    def forward(self, x):
        out = self.activation(self.stages(x) + self.skip(x))
        return out[:, : out.shape[1] // 2]


def test_residual_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.residual_block, _Block)
    assert passed and "correct" in output


@pytest.mark.parametrize("wrong, message", [
    (_NoSkip, "returns zeros"),
    (_ActivationBeforeSum, "expected relu(x)"),
    (_RawInputSkip, "add self.skip(x)"),
    (_NoActivation, "expected relu(x)"),
    (_SkipOnly, "ignores its convolutions"),
    (_HalfChannels, "your output has 4 channels, expected 8"),
])
def test_residual_wrong_answers_get_their_message(capsys, wrong, message):
    passed, output = _line(capsys, ex.residual_block, wrong)
    assert not passed
    assert message in output


def test_residual_instance_instead_of_class(capsys):
    passed, output = _line(capsys, ex.residual_block, _Block(1, 2, 2))
    assert not passed and "pass the class itself" in output


# ---------------------------------------------------------------- Exercise 3: accumulation
def _epoch(step_rule):
    """A training epoch whose optimiser handling is given by step_rule(index, n, accumulate)."""

    def train_one_epoch(net, batches, optimizer, loss_fn, device="cpu", accumulate=1, divide=True,
                        clear=True):
        net.train()
        for index, batch in enumerate(batches):
            image = torch.from_numpy(batch["image"])
            label = torch.from_numpy(batch["label"])
            loss = loss_fn(torch.sigmoid(net(image)), label)
            (loss / accumulate if divide else loss).backward()
            if step_rule(index, len(batches), accumulate):
                optimizer.step()
                if clear:
                    optimizer.zero_grad()
        return {"loss": 0.0}

    return train_one_epoch


_RIGHT = _epoch(lambda index, n, accumulate: (index + 1) % accumulate == 0 or index + 1 == n)


def test_accumulation_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.accumulation, _RIGHT)
    assert passed and "correct" in output


def _every_batch(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    return _epoch(lambda *_: True)(net, batches, optimizer, loss_fn, device, accumulate)


def _not_divided(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    return _RIGHT(net, batches, optimizer, loss_fn, device, accumulate, divide=False)


def _never_cleared(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    return _RIGHT(net, batches, optimizer, loss_fn, device, accumulate, clear=False)


@pytest.mark.parametrize("wrong, message", [
    (_every_batch, "called optimizer.step() 4 times, expected 1"),
    (_not_divided, "divide each loss by accumulate"),
    (_never_cleared, "optimizer.zero_grad()"),
])
def test_accumulation_wrong_answers_get_their_message(capsys, wrong, message):
    passed, output = _line(capsys, ex.accumulation, wrong)
    assert not passed
    assert message in output


def test_hints_and_solution_print(capsys):
    for exercise in (ex.dice_loss, ex.residual_block, ex.accumulation):
        exercise.hint(1)
        exercise.solution()
        output = capsys.readouterr().out
        assert exercise.label in output
