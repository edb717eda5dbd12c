"""Lab 1 self-checks: the notebook's answer passes; typical wrong answers each get their own message.

The right answers come from ``labkit.labs.vnet`` (the notebook's exported cells); each wrong
answer is that answer with one slip.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from labkit import metrics  # noqa: E402
from labkit.exercises import Exercise  # noqa: E402
from labkit.exercises import vnet as ex  # noqa: E402
from labkit.labs import vnet as lab  # noqa: E402
from labkit.labs.vnet_solutions import SOLUTIONS  # noqa: E402

pytestmark = pytest.mark.torch


def _line(capsys, exercise, *args):
    passed = exercise.check(*args)
    output = capsys.readouterr().out
    assert output.count("\n") == 1, output  # exactly one printed line
    return passed, output


def _fails_with(capsys, exercise, answer, message):
    passed, output = _line(capsys, exercise, answer)
    assert not passed
    assert message in output, output


# ---------------------------------------------------------------- Exercise 1: random flip
class _ImageOnly(lab.RandomFlip):
    def __call__(self, case, rng):
        return dict(lab.RandomFlip(["image"], self.axis, self.probability)(case, rng), label=case["label"])


class _AxisPerKey(lab.RandomFlip):
    def __call__(self, case, rng):
        flip = rng.random() < self.probability
        return {**case, **{key: np.flip(case[key], axis=(self.axis + shift) % 3 + 1).copy()
                           for shift, key in enumerate(self.keys) if flip}}


class _ProbabilityIgnored(lab.RandomFlip):
    def __call__(self, case, rng):
        rng.random()
        return lab.RandomFlip(self.keys, self.axis, 1.0)(case, rng)


class _Inverted(lab.RandomFlip):
    def __call__(self, case, rng):
        return lab.RandomFlip(self.keys, self.axis, 1 - self.probability)(case, rng)


class _DrawPerKey(lab.RandomFlip):
    def __call__(self, case, rng):
        for key in self.keys:
            case = lab.RandomFlip([key], self.axis, self.probability)(case, rng)
        return case


class _ChannelAxis(lab.RandomFlip):
    def __call__(self, case, rng):
        flip = rng.random() < self.probability
        return {**case, **{key: np.flip(case[key], axis=self.axis).copy() for key in self.keys if flip}}


class _InPlace(lab.RandomFlip):
    def __call__(self, case, rng):
        case.update(lab.RandomFlip(self.keys, self.axis, self.probability)(case, rng))
        return case


class _GlobalRandom(lab.RandomFlip):
    def __call__(self, case, rng):
        return lab.RandomFlip(self.keys, self.axis, self.probability)(case, np.random.default_rng())


def test_flip_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.flip, lab.RandomFlip)
    assert passed and "correct" in output


@pytest.mark.parametrize("wrong, message", [
    (_ImageOnly, "only the image was flipped"),
    (_AxisPerKey, "the image was flipped along array axis 1 and the label along 2"),
    (_ProbabilityIgnored, "the probability is ignored"),
    (_Inverted, "not >"),
    (_DrawPerKey, "image and label were flipped differently"),
    (_ChannelAxis, "the channel axis"),
    (_InPlace, "changed the case it was given"),
    (_GlobalRandom, "draw from the rng passed in"),
])
def test_flip_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.flip, wrong, message)


def test_the_lab_augments_with_its_own_flip():
    assert isinstance(lab.augmentation[0], lab.RandomFlip)


# ---------------------------------------------------------------- Exercise 2: Dice loss
def _eps_only_below(prob, label, squared=True):  # the original course's loss
    dims = tuple(range(1, prob.ndim))
    total = (prob**2).sum(dims) + (label**2).sum(dims) if squared else prob.sum(dims) + label.sum(dims)
    return (1 - 2 * (prob * label).sum(dims) / (total + 1e-5)).mean()


def _per_case(prob, label, squared=True):
    return torch.stack([lab.dice_loss(prob[k:k + 1], label[k:k + 1], squared) for k in range(len(prob))])


def test_dice_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.dice_loss, lab.dice_loss)
    assert passed and "correct" in output


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")
@pytest.mark.parametrize("wrong, message", [
    (_eps_only_below, "gives loss 1: with eps only in the denominator"),
    (lambda p, g, squared=True: lab.dice_loss(p, g, squared, eps=0), "gives NaN"),
    (lambda p, g, squared=True: 1 - lab.dice_loss(p, g, squared), "a loss is 1 - Dice"),
    (lambda p, g, squared=True: lab.dice_loss(p, g, not squared), "uses the other form"),
    (lambda p, g, squared=True: lab.dice_loss(p.reshape(1, -1), g.reshape(1, -1), squared),
     "pooled the whole batch"),
    (_per_case, "expected a single number"),
    (lambda p, g, squared=True: float(lab.dice_loss(p, g, squared)), "returned a float"),
    (lambda p, g, squared=True: torch.tensor(float(lab.dice_loss(p, g, squared))), "no gradient flows"),
])
def test_dice_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.dice_loss, wrong, message)


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


# ---------------------------------------------------------------- Exercise 3: Dice score
def _soft(prob, label, threshold=0.5):
    return 1 - torch.stack([lab.dice_loss(prob[k:k + 1], label[k:k + 1], squared=False, eps=0)
                            for k in range(len(prob))])


def _empty_scores_zero(prob, label, threshold=0.5):
    scores = lab.dice_score(prob, label, threshold)
    return torch.where((prob > threshold).sum((1, 2, 3, 4)) + label.sum((1, 2, 3, 4)) > 0, scores, 0.0)


@pytest.mark.parametrize("wrong, message", [
    (_soft, "you used the probabilities themselves"),
    (lambda prob, label, threshold=0.5: lab.dice_score(prob, label), "use the threshold argument"),
    (lambda prob, label, threshold=0.5: 1 - lab.dice_score(prob, label, threshold), "returned 1 - Dice"),
    (_empty_scores_zero, "two empty masks give 0.000"),
    (lambda prob, label, threshold=0.5: lab.dice_score(prob.reshape(1, -1), label.reshape(1, -1),
                                                       threshold).expand(len(prob)),
     "every case got the same score"),
    (lambda prob, label, threshold=0.5: lab.dice_score(prob, label, threshold)[:2], "returned shape (2,)"),
])
def test_dice_score_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.dice_score, wrong, message)


def test_dice_score_right_answer_passes_and_agrees_with_metrics(capsys):
    passed, _ = _line(capsys, ex.dice_score, lab.dice_score)
    assert passed
    prob, label = torch.rand(1, 1, 5, 5, 5), (torch.rand(1, 1, 5, 5, 5) > 0.5).float()
    assert float(lab.dice_score(prob, label)) == pytest.approx(metrics.dice(prob > 0.5, label))


# ---------------------------------------------------------------- Exercise 4: residual block
# Wrong answers: the notebook's block with one layer changed, or another forward.
def _replace_convolutions(block, make):
    """Rebuild each stage convolution with ``make(stage, convolution)``."""
    stage = 0
    for index, layer in enumerate(block.stages):
        if isinstance(layer, nn.Conv3d):
            block.stages[index] = make(stage, layer)
            stage += 1


class _ReluBeforeSum(lab.ResidualBlock):  # the original course's block
    def __init__(self, *args):
        super().__init__(*args)
        self.stages.append(nn.ReLU())


class _EveryStageTakesInput(lab.ResidualBlock):  # the original course's stages
    def __init__(self, n_stages, in_channels, out_channels, normalization="groupnorm"):
        super().__init__(n_stages, in_channels, out_channels, normalization)
        _replace_convolutions(self, lambda stage, conv: nn.Conv3d(in_channels, out_channels, 3, padding=1))


class _PaperKernels(lab.ResidualBlock):
    def __init__(self, *args):
        super().__init__(*args)
        _replace_convolutions(self, lambda stage, conv: nn.Conv3d(conv.in_channels, conv.out_channels,
                                                                  5, padding=2))


class _NoPadding(lab.ResidualBlock):
    def __init__(self, *args):
        super().__init__(*args)
        _replace_convolutions(self, lambda stage, conv: nn.Conv3d(conv.in_channels, conv.out_channels, 3))


class _NoProjection(lab.ResidualBlock):
    def __init__(self, *args):
        super().__init__(*args)
        self.skip = nn.Identity()


class _NoActivation(lab.ResidualBlock):
    def forward(self, x):
        return self.stages(x) + self.skip(x)


class _NoSkip(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.stages(x))


class _SkipOnly(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.skip(x))


def test_residual_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.residual_block, lab.ResidualBlock)
    assert passed and "correct" in output


@pytest.mark.parametrize("wrong, message", [
    (_ReluBeforeSum, "self.stages ends with a ReLU"),
    (_EveryStageTakesInput, "stage 2 maps 2 -> 16 channels, expected 16 -> 16"),
    (_PaperKernels, "5x5x5 kernels are the paper's"),
    (_NoPadding, "padding=1"),
    (_NoProjection, "the skip needs a 1x1x1 convolution"),
    (_NoActivation, "apply self.activation after the sum"),
    (_NoSkip, "the skip is missing"),
    (_SkipOnly, "ignores its convolutions"),
])
def test_residual_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.residual_block, wrong, message)


def test_residual_instance_instead_of_class(capsys):
    _fails_with(capsys, ex.residual_block, lab.ResidualBlock(1, 2, 2), "pass the class itself")


# ---------------------------------------------------------------- Exercise 5: the V-Net's forward pass
class _VNet(lab.VNet):
    """The notebook's V-Net with a forward pass written level by level, ``slip`` deciding how."""

    slip = None

    def forward(self, x):
        kept = []
        for block, down in zip(self.encoder, self.down, strict=True):
            x = block(x)
            if self.slip == "keep after down":
                x = down(x)
                kept.append(x)
            else:
                kept.append(x)
                x = down(x)
        x = x if self.slip == "no bottom" else self.bottom(x)
        for up, block in zip(self.up, self.decoder, strict=True):
            skip = kept.pop(0 if self.slip == "first in, first out" else -1)
            if self.slip == "no skips":
                x = up(x)
            elif self.slip == "concatenate":
                x = torch.cat([up(x), skip], dim=1)
            else:
                x = up(x) + skip
            x = block(x)
        if self.slip == "no head":
            return x
        logits = self.head(x)
        return torch.sigmoid(logits) if self.slip == "sigmoid" else logits


def _with_slip(name):
    return type(f"VNet_{name}", (_VNet,), {"slip": name})


def test_vnet_right_answer_passes_and_so_does_the_level_by_level_rewrite(capsys):
    for answer in (lab.VNet, _with_slip(None)):
        passed, output = _line(capsys, ex.vnet, answer)
        assert passed and "level by level" in output


@pytest.mark.parametrize("slip, message", [
    ("no skips", "got up(x) alone: add the features kept at that level"),
    ("first in, first out", "tensors of different sizes were added"),
    ("keep after down", "tensors of different sizes were added"),
    ("concatenate", "a block got the wrong number of channels"),
    ("sigmoid", "return the logits"),
    ("no bottom", "self.bottom never ran"),
    ("no head", "return self.head(x)"),
])
def test_vnet_wrong_answers_get_their_message(capsys, slip, message):
    _fails_with(capsys, ex.vnet, _with_slip(slip), message)


def test_reference_forward_is_the_lab_network():
    torch.manual_seed(0)
    net = lab.VNet(2, 1, 4).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        logits, kept, fused = ex.reference_forward(net, x)
        assert torch.allclose(logits, net(x), atol=1e-6)
    assert [tuple(tensor.shape[1:]) for tensor in kept] == [(4, 16, 16, 16), (8, 8, 8, 8),
                                                             (16, 4, 4, 4), (32, 2, 2, 2)]


# ---------------------------------------------------------------- Exercise 6: accumulation
# Wrong answers: the notebook's epoch made to step every batch, sum the losses, keep gradients...
def _every_batch(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    return lab.train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate=1)


def _not_divided(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    summed = lambda prob, label: accumulate * loss_fn(prob, label)  # noqa: E731
    return lab.train_one_epoch(net, batches, optimizer, summed, device, accumulate)


def _never_cleared(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    optimizer.zero_grad = lambda set_to_none=True: None
    return lab.train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate)


def _short_group_dropped(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    full = len(batches) // accumulate * accumulate
    return lab.train_one_epoch(net, batches[:full], optimizer, loss_fn, device, accumulate)


def _divided_by_accumulate(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    """Every loss divided by ``accumulate``, the short last group's too."""
    net.train()
    optimizer.zero_grad()
    losses = []
    for index, batch in enumerate(batches):
        image, label = lab.to_tensors(batch, device)
        loss = loss_fn(torch.sigmoid(net(image)), label)
        (loss / accumulate).backward()
        if (index + 1) % accumulate == 0 or index + 1 == len(batches):
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    return {"loss": float(np.mean(losses))}


def _logged_divided(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    result = lab.train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate)
    return dict(result, loss=result["loss"] / accumulate)


def test_accumulation_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.accumulation, lab.train_one_epoch)
    assert passed and "correct" in output


@pytest.mark.parametrize("wrong, message", [
    (_every_batch, "called optimizer.step() 4 times, not 1"),
    (_not_divided, "divide each loss by accumulate"),
    (_never_cleared, "optimizer.zero_grad()"),
    (_short_group_dropped, "the last 2 batch(es) never reached a step"),
    (_divided_by_accumulate, "divide by the number of batches in the group"),
    (_logged_divided, "the logged loss is the loss divided by accumulate"),
])
def test_accumulation_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.accumulation, wrong, message)


# ---------------------------------------------------------------- Exercise 7: the threshold
def _right_threshold(probs, labels, thresholds):
    scores = [np.mean([metrics.dice(p > t, g) for p, g in zip(probs, labels, strict=True)])
              for t in thresholds]
    return thresholds[int(np.argmax(scores))], scores


def _pooled(probs, labels, thresholds):
    scores = [metrics.dice(np.concatenate([(p > t).ravel() for p in probs]),
                           np.concatenate([g.ravel() for g in labels])) for t in thresholds]
    return thresholds[int(np.argmax(scores))], scores


def _lowest(probs, labels, thresholds):
    scores = _right_threshold(probs, labels, thresholds)[1]
    return thresholds[int(np.argmin(scores))], scores


def _index(probs, labels, thresholds):
    scores = _right_threshold(probs, labels, thresholds)[1]
    return int(np.argmax(scores)), scores


def _not_thresholded(probs, labels, thresholds):
    soft = np.mean([2 * (p * g).sum() / (p.sum() + g.sum()) for p, g in zip(probs, labels, strict=True)])
    return thresholds[0], [soft] * len(thresholds)


def test_threshold_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.threshold, _right_threshold)
    assert passed and "correct" in output
    assert "def choose_threshold(" in SOLUTIONS[ex.threshold.number][1]


@pytest.mark.parametrize("wrong, message", [
    (_pooled, "you pooled every case's voxels into one Dice"),
    (_lowest, "you chose the lowest Dice"),
    (_index, "an index"),
    (_not_thresholded, "every threshold gave the same score"),
    (lambda probs, labels, thresholds: _right_threshold(probs, labels, thresholds)[0], "return (best threshold"),
])
def test_threshold_wrong_answers_get_their_message(capsys, wrong, message):
    _fails_with(capsys, ex.threshold, wrong, message)


# ---------------------------------------------------------------- hints and solutions
EXERCISES = [(ex.flip, "def __call__("), (ex.dice_loss, "def dice_loss("),
             (ex.dice_score, "def dice_score("), (ex.residual_block, "def __init__("),
             (ex.vnet, "def forward("), (ex.accumulation, "def train_one_epoch("),
             (ex.threshold, "def choose_threshold(")]


def test_exercises_are_numbered_in_notebook_order_with_hints_and_solutions(capsys):
    assert [exercise.number for exercise, _ in EXERCISES] == list(range(1, len(EXERCISES) + 1))
    assert sorted(SOLUTIONS) == list(range(1, len(EXERCISES) + 1))
    for exercise, code in EXERCISES:
        for number in (1, 2, 3):
            exercise.hint(number)
            assert f"hint {number} of 3" in capsys.readouterr().out
        exercise.solution()
        output = capsys.readouterr().out
        assert output.startswith(f"{exercise.label} - one possible solution") and code in output
        assert "SOLUTION" not in output
        assert SOLUTIONS[exercise.number][0] == exercise.title  # numbered and titled as in the notebook


def test_missing_solution_is_a_message_not_a_crash(capsys):
    Exercise(9, "not in the notebook", lambda answer: None, [], lab="vnet").solution()
    assert "Exercise 9 (not in the notebook): no stored solution found" in capsys.readouterr().out
    Exercise(1, "no such lab", lambda answer: None, [], lab="nowhere").solution()
    assert "run `make export`" in capsys.readouterr().out
