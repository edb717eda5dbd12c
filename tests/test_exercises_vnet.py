"""Lab 1 self-checks: the notebook's answer passes, typical wrong answers get their message."""


import pytest

torch = pytest.importorskip("torch")

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


# ---------------------------------------------------------------- Exercise 1: Dice loss
# Wrong answers are the notebook's right answer with one slip.
def test_dice_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.dice_loss, lab.dice_loss)
    assert passed and "correct" in output


def test_dice_seed_form_with_eps_only_below_passes(capsys):
    def seed_style(prob, label, squared=True):
        dims = tuple(range(1, prob.ndim))
        total = (prob**2).sum(dims) + (label**2).sum(dims) if squared else prob.sum(dims) + label.sum(dims)
        return (1 - 2 * (prob * label).sum(dims) / (total + 1e-5)).mean()

    assert _line(capsys, ex.dice_loss, seed_style)[0]


def _per_case(prob, label, squared=True):
    return torch.stack([lab.dice_loss(prob[k:k + 1], label[k:k + 1], squared) for k in range(len(prob))])


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")
@pytest.mark.parametrize("wrong, message", [
    (lambda p, g, squared=True: 1 - lab.dice_loss(p, g, squared), "you returned the Dice score"),
    (lambda p, g, squared=True: lab.dice_loss(p, g, not squared), "uses the other form"),
    (lambda p, g, squared=True: lab.dice_loss(p.reshape(1, -1), g.reshape(1, -1), squared),
     "pooled the whole batch"),
    (_per_case, "expected a single number"),
    (lambda p, g, squared=True: float(lab.dice_loss(p, g, squared)), "returned a float"),
    (lambda p, g, squared=True: torch.tensor(float(lab.dice_loss(p, g, squared))), "no gradient flows"),
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
# Wrong answers: the notebook's block with another forward.
class _NoSkip(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.stages(x))


class _ActivationBeforeSum(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.stages(x)) + self.skip(x)


class _RawInputSkip(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.stages(x) + x)


class _NoActivation(lab.ResidualBlock):
    def forward(self, x):
        return self.stages(x) + self.skip(x)


class _SkipOnly(lab.ResidualBlock):
    def forward(self, x):
        return self.activation(self.skip(x))


class _HalfChannels(lab.ResidualBlock):
    def forward(self, x):
        out = self.activation(self.stages(x) + self.skip(x))
        return out[:, : out.shape[1] // 2]


def test_residual_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.residual_block, lab.ResidualBlock)
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
    passed, output = _line(capsys, ex.residual_block, lab.ResidualBlock(1, 2, 2))
    assert not passed and "pass the class itself" in output


# ---------------------------------------------------------------- Exercise 3: accumulation
# Wrong answers: the notebook's epoch made to step every batch, sum the losses or keep gradients.
def test_accumulation_right_answer_passes(capsys):
    passed, output = _line(capsys, ex.accumulation, lab.train_one_epoch)
    assert passed and "correct" in output


def _every_batch(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    return lab.train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate=1)


def _not_divided(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    summed = lambda prob, label: accumulate * loss_fn(prob, label)  # noqa: E731
    return lab.train_one_epoch(net, batches, optimizer, summed, device, accumulate)


def _never_cleared(net, batches, optimizer, loss_fn, device="cpu", accumulate=1):
    optimizer.zero_grad = lambda set_to_none=True: None
    return lab.train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate)


@pytest.mark.parametrize("wrong, message", [
    (_every_batch, "called optimizer.step() 4 times, expected 1"),
    (_not_divided, "divide each loss by accumulate"),
    (_never_cleared, "optimizer.zero_grad()"),
])
def test_accumulation_wrong_answers_get_their_message(capsys, wrong, message):
    passed, output = _line(capsys, ex.accumulation, wrong)
    assert not passed
    assert message in output


def test_hints_and_solutions_from_the_notebook_print(capsys):
    for exercise, code in ((ex.dice_loss, "def dice_loss("), (ex.residual_block, "def forward("),
                           (ex.accumulation, "def train_one_epoch(")):
        exercise.hint(1)
        assert exercise.label in capsys.readouterr().out
        exercise.solution()
        output = capsys.readouterr().out
        assert output.startswith(f"{exercise.label} - one possible solution") and code in output
        assert "SOLUTION" not in output
        assert SOLUTIONS[exercise.number][0] == exercise.title  # numbered and titled as in the notebook


def test_missing_solution_is_a_message_not_a_crash(capsys):
    Exercise(7, "not in the notebook", lambda answer: None, [], lab="vnet").solution()
    assert "Exercise 7 (not in the notebook): no stored solution found" in capsys.readouterr().out
    Exercise(1, "no such lab", lambda answer: None, [], lab="nowhere").solution()
    assert "run `make export`" in capsys.readouterr().out
