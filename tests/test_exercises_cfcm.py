"""Lab 2 exercise checks: the notebook's answer passes, each usual slip gets its own message.

The right answers are the notebook's: ``dice_score`` from ``labkit.labs.cfcm`` (an exported
cell), ``convlstm_step`` and ``carry_state`` from the solutions ``make export`` stored. The
``make_*`` helpers below only build wrong answers.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from labkit.exercises import cfcm as ex  # noqa: E402
from labkit.labs import cfcm as lab  # noqa: E402

pytestmark = pytest.mark.tf


def notebook_answer(exercise, name):
    """The function ``name`` from the notebook's solution to ``exercise``."""
    text = exercise.solution_text()
    assert text, f"no stored solution for {exercise.label}: run `make export`"
    namespace = {"tf": tf, "np": np}
    exec(text, namespace)
    return namespace[name]


# ---- Exercise 2: one ConvLSTM step ----------------------------------------------------------
def make_step(forget_bias=1.0, activation=tf.nn.relu, order="ijfo", swap_state=False, hidden_from_cell=True):
    def convlstm_step(inputs, state, kernel, bias):
        cell, hidden = tf.split(state, 2, axis=-1)
        features = tf.nn.conv2d(tf.concat([inputs, hidden], -1), kernel, strides=1, padding="SAME") + bias
        gates = dict(zip(order, tf.split(features, 4, axis=-1), strict=True))
        new_cell = tf.sigmoid(gates["f"] + forget_bias) * cell + tf.sigmoid(gates["i"]) * activation(gates["j"])
        new_hidden = tf.sigmoid(gates["o"]) * (activation(new_cell) if hidden_from_cell else gates["o"])
        first, second = (new_hidden, new_cell) if swap_state else (new_cell, new_hidden)
        return (new_cell if swap_state else new_hidden), tf.concat([first, second], -1)
    return convlstm_step


def test_convlstm_step_right_answer_passes(capsys):
    assert ex.ex_convlstm_step.check(notebook_answer(ex.ex_convlstm_step, "convlstm_step")) is True
    assert "correct - matches keras.layers.ConvLSTM2D" in capsys.readouterr().out


@pytest.mark.parametrize("slip, expected", [
    (dict(forget_bias=0.0), "forget bias"),
    (dict(activation=tf.tanh), "tanh"),
    (dict(order="ifjo"), "ordered i, j, f, o"),
    (dict(swap_state=True), "swapped"),
    (dict(hidden_from_cell=False), "new_hidden = sigmoid(o) * relu(new_cell)"),
])
def test_convlstm_step_slips_are_named(capsys, slip, expected):
    assert ex.ex_convlstm_step.check(make_step(**slip)) is False
    out = capsys.readouterr().out
    assert "not yet" in out and expected in out


def test_convlstm_step_wrong_shapes_and_types(capsys):
    assert ex.ex_convlstm_step.check(lambda inputs, state, kernel, bias: None) is False
    assert "two things" in capsys.readouterr().out
    assert ex.ex_convlstm_step.check(lambda inputs, state, kernel, bias: (inputs, state)) is False
    assert "new_hidden has shape" in capsys.readouterr().out
    assert ex.ex_convlstm_step.check("not a function") is False
    assert "pass your function itself" in capsys.readouterr().out


def test_convlstm_step_crash_is_reported_not_raised(capsys):
    def broken(inputs, state, kernel, bias):
        raise NotImplementedError
    assert ex.ex_convlstm_step.check(broken) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_fused_mapping_matches_keras_over_several_steps():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(1, 3, 5, 5, 2)).astype(np.float32)
    cell = np.zeros((1, 5, 5, 3), np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, 5, 12)).astype(np.float32)
    bias = rng.normal(size=(12,)).astype(np.float32)
    outputs, hidden, last_cell = ex.keras_convlstm_steps(inputs, cell, cell, kernel, bias, activation="tanh")
    step = make_step(activation=tf.tanh)
    state = tf.zeros((1, 5, 5, 6))
    for t in range(3):
        out, state = step(tf.constant(inputs[:, t]), state, kernel, bias)
        np.testing.assert_allclose(out.numpy(), outputs[:, t], atol=1e-5)
    np.testing.assert_allclose(state.numpy()[..., :3], last_cell, atol=1e-5)


# ---- Exercise 1: the binarised Dice score ---------------------------------------------------
def test_dice_score_right_answer_passes(capsys):
    assert ex.ex_dice_score.check(lab.dice_score) is True
    assert "correct" in capsys.readouterr().out


def soft_dice(pred, label, eps=1e-3):
    overlap = tf.reduce_sum(pred * label, axis=[1, 2, 3])
    return tf.reduce_mean(2.0 * overlap / (tf.reduce_sum(pred ** 2 + label ** 2, axis=[1, 2, 3]) + eps))


def pooled_dice(pred, label, eps=1e-3):
    binary = tf.cast(pred > 0.5, tf.float32)
    return 2.0 * tf.reduce_sum(binary * label) / (tf.reduce_sum(binary + label) + eps)


def per_image_dice(pred, label, eps=1e-3):
    binary = tf.cast(pred > 0.5, tf.float32)
    return 2.0 * tf.reduce_sum(binary * label, axis=[1, 2, 3]) / (tf.reduce_sum(binary + label, axis=[1, 2, 3]) + eps)


def eps_below_only(pred, label, eps=1e-3):
    binary = tf.cast(pred > 0.5, tf.float32)
    return tf.reduce_mean(2.0 * tf.reduce_sum(binary * label, axis=[1, 2, 3])
                          / (tf.reduce_sum(binary + label, axis=[1, 2, 3]) + eps))


@pytest.mark.parametrize("wrong, expected", [
    (soft_dice, "binarise the prediction at 0.5"),
    (eps_below_only, "add eps to the numerator too"),
    (pooled_dice, "per image"),
    (per_image_dice, "return one number"),
    (lambda pred, label: tf.constant(0.9), "expected 1.000"),
])
def test_dice_score_slips_are_named(capsys, wrong, expected):
    assert ex.ex_dice_score.check(wrong) is False
    out = capsys.readouterr().out
    assert "not yet" in out and expected in out


# ---- Exercise 3: carrying the state to the finer level --------------------------------------
def make_carry(relu=True, use_bias=True, swap=False):
    def carry_state(state, kernel, bias):
        shape = tf.shape(state)
        output_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], tf.shape(kernel)[2]])
        up = tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2, padding="SAME")
        up = up + bias if use_bias else up
        up = tf.nn.relu(up) if relu else up
        cell, hidden = tf.split(up, 2, axis=-1)
        return (hidden, cell) if swap else (cell, hidden)
    return carry_state


def test_carry_state_right_answer_passes(capsys):
    assert ex.ex_carry_state.check(notebook_answer(ex.ex_carry_state, "carry_state")) is True
    assert "correct" in capsys.readouterr().out


def test_carry_state_keras_layer_answer_passes(capsys):
    keras = pytest.importorskip("keras")

    def carry_state(state, kernel, bias):
        layer = keras.layers.Conv2DTranspose(kernel.shape[2], 2, strides=2, activation="relu")
        layer.build(state.shape)
        layer.set_weights([kernel.numpy(), bias.numpy()])
        return tf.split(layer(state), 2, axis=-1)
    assert ex.ex_carry_state.check(carry_state) is True


@pytest.mark.parametrize("slip, expected", [
    (dict(relu=False), "ReLU"), (dict(use_bias=False), "bias is missing"), (dict(swap=True), "swapped"),
])
def test_carry_state_slips_are_named(capsys, slip, expected):
    assert ex.ex_carry_state.check(make_carry(**slip)) is False
    out = capsys.readouterr().out
    assert "not yet" in out and expected in out


def test_carry_state_wrong_shape(capsys):
    assert ex.ex_carry_state.check(lambda state, kernel, bias: tf.split(state, 2, axis=-1)) is False
    assert "twice the height" in capsys.readouterr().out


def test_hand_written_transposed_conv_matches_tensorflow():
    rng = np.random.default_rng(1)
    state = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    kernel = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)
    bias = rng.normal(size=(5,)).astype(np.float32)
    expected = tf.nn.conv2d_transpose(state, kernel, (2, 6, 4, 5), strides=2).numpy() + bias
    np.testing.assert_allclose(ex.transposed_conv_by_hand(state, kernel, bias), expected, atol=1e-5)


def test_solutions_come_from_the_notebook(capsys):
    from labkit.labs.cfcm_solutions import SOLUTIONS

    for exercise, code in ((ex.ex_dice_score, "def dice_score("), (ex.ex_convlstm_step, "def convlstm_step("),
                           (ex.ex_carry_state, "def carry_state(")):
        exercise.solution()
        output = capsys.readouterr().out
        assert output.startswith(f"{exercise.label} - one possible solution") and code in output
        assert SOLUTIONS[exercise.number][0] == exercise.title  # numbered and titled as in the notebook
