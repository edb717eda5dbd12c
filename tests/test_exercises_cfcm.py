"""Lab 2 exercise checks: the notebook's answer passes, each usual slip gets its own message.

The right answers are the notebook's (``labkit.labs.cfcm``, exported from its cells, solutions
included). The ``make_*`` helpers and the subclasses below only build wrong answers.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from labkit.exercises import cfcm as ex  # noqa: E402
from labkit.labs import cfcm as lab  # noqa: E402

pytestmark = pytest.mark.tf


def verdict(capsys, exercise, answer):
    passed = exercise.check(answer)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one line, whatever the answer printed
    return passed, out


# ---- Exercise 1: the binarised Dice score ---------------------------------------------------
def soft_dice(prob, label, eps=1e-3):
    overlap = tf.reduce_sum(prob * label, axis=[1, 2, 3])
    return tf.reduce_mean((2.0 * overlap + eps) / (tf.reduce_sum(prob**2 + label**2, axis=[1, 2, 3]) + eps))


def pooled_dice(prob, label, eps=1e-3):
    binary = tf.cast(prob > 0.5, tf.float32)
    return (2.0 * tf.reduce_sum(binary * label) + eps) / (tf.reduce_sum(binary + label) + eps)


def per_image_dice(prob, label, eps=1e-3):
    binary = tf.cast(prob > 0.5, tf.float32)
    return (2.0 * tf.reduce_sum(binary * label, axis=[1, 2, 3]) + eps) / (tf.reduce_sum(binary + label, axis=[1, 2, 3]) + eps)


def eps_below_only(prob, label, eps=1e-3):
    binary = tf.cast(prob > 0.5, tf.float32)
    return tf.reduce_mean(2.0 * tf.reduce_sum(binary * label, axis=[1, 2, 3])
                          / (tf.reduce_sum(binary + label, axis=[1, 2, 3]) + eps))


def no_eps(prob, label):
    binary = tf.cast(prob > 0.5, tf.float32)
    return tf.reduce_mean(2.0 * tf.reduce_sum(binary * label, axis=[1, 2, 3]) / tf.reduce_sum(binary + label, axis=[1, 2, 3]))


def numpy_dice(prob, label, eps=1e-3):
    binary = (np.asarray(prob) > 0.5).astype(np.float32)
    return np.mean((2 * np.sum(binary * label, axis=(1, 2, 3)) + eps) / (np.sum(binary + label, axis=(1, 2, 3)) + eps))


def test_dice_score_right_answer_passes(capsys):
    passed, out = verdict(capsys, ex.dice_score, lab.dice_score)
    assert passed and "correct - works inside tf.function" in out


@pytest.mark.parametrize("wrong, expected", [
    (soft_dice, "binarise the prediction at 0.5"),
    (eps_below_only, "add eps to the numerator too"),
    (no_eps, "add eps to the numerator too"),  # 0 / 0 is NaN: it must not pass
    (pooled_dice, "compute Dice per image"),
    (per_image_dice, "return one number"),
    (numpy_dice, "not inside tf.function"),
    (lambda prob, label: tf.constant(0.9), "expected 1.000"),
])
def test_dice_score_slips_are_named(capsys, wrong, expected):
    passed, out = verdict(capsys, ex.dice_score, wrong)
    assert not passed and "not yet" in out and expected in out, out


# ---- Exercise 2: one ConvLSTM step ----------------------------------------------------------
def make_step(forget=None, update=tf.nn.relu, output=tf.nn.relu, order="igfo", hidden_first=False,
              read_swapped=False, write_swapped=False, old_cell=False):
    """A convlstm_step with one slip; ``forget`` a number hard-codes the forget bias."""
    def convlstm_step(inputs, state, kernel, bias, forget_bias=1.0):
        cell, hidden = tf.split(state, 2, axis=-1)
        if read_swapped:
            cell, hidden = hidden, cell
        both = tf.concat([hidden, inputs] if hidden_first else [inputs, hidden], -1)
        gates = dict(zip(order, tf.split(tf.nn.conv2d(both, kernel, 1, "SAME") + bias, 4, -1), strict=True))
        bias_f = forget_bias if forget is None else forget
        new_cell = tf.sigmoid(gates["f"] + bias_f) * cell + tf.sigmoid(gates["i"]) * update(gates["g"])
        new_hidden = tf.sigmoid(gates["o"]) * output(cell if old_cell else new_cell)
        return new_hidden, tf.concat([new_hidden, new_cell] if write_swapped else [new_cell, new_hidden], -1)
    return convlstm_step


def test_convlstm_step_right_answer_passes(capsys):
    passed, out = verdict(capsys, ex.convlstm_step, lab.convlstm_step)
    assert passed and "forget_bias 1.0 and 0.5" in out


@pytest.mark.parametrize("slip, expected", [
    (dict(forget=0.0), "the forget bias is missing"),
    (dict(forget=1.0), "whatever forget_bias says"),
    (dict(update=tf.tanh, output=tf.tanh), "tanh where CFCM uses ReLU"),
    (dict(update=tf.identity), "the update g has no ReLU"),
    (dict(output=tf.identity), "no ReLU on the cell"),  # found only because the cell state is signed
    (dict(old_cell=True), "uses the old cell state"),
    (dict(hidden_first=True), "the concatenation is reversed"),
    (dict(order="ifgo"), "you split the 4C channels as i, f, g, o"),
    (dict(order="igof"), "as i, g, o, f"),
    (dict(read_swapped=True), "swapped when you split the state"),
    (dict(write_swapped=True), "the cell comes first"),
])
def test_convlstm_step_slips_are_named(capsys, slip, expected):
    passed, out = verdict(capsys, ex.convlstm_step, make_step(**slip))
    assert not passed and "not yet" in out and expected in out, out


def test_convlstm_step_wrong_shapes_and_types(capsys):
    assert "two things" in verdict(capsys, ex.convlstm_step, lambda inputs, state, kernel, bias, forget_bias=1.0: None)[1]
    out = verdict(capsys, ex.convlstm_step, lambda inputs, state, kernel, bias, forget_bias=1.0: (inputs, state))[1]
    assert "new_hidden has shape" in out
    assert "pass your convlstm_step itself" in verdict(capsys, ex.convlstm_step, "not a function")[1]


def test_a_stub_or_a_crash_is_reported_not_raised(capsys):
    def stub(inputs, state, kernel, bias, forget_bias=1.0):
        raise NotImplementedError("Exercise 2: one ConvLSTM step")

    def crash(inputs, state, kernel, bias, forget_bias=1.0):
        print("debugging output that the check hides")
        return tf.nn.conv2d(inputs, kernel, 1, "SAME")  # wrong channels: TensorFlow raises

    assert "not implemented yet" in verdict(capsys, ex.convlstm_step, stub)[1]
    passed, out = verdict(capsys, ex.convlstm_step, crash)
    assert not passed and "your code raised" in out and "debugging" not in out


def test_reference_step_and_fused_mapping_match_keras_over_several_steps():
    """The check's two peers agree: the textbook step on mapped weights and ConvLSTM2D."""
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(1, 3, 5, 5, 2)).astype(np.float32)
    cell = rng.normal(size=(1, 5, 5, 3)).astype(np.float32)
    hidden = np.abs(rng.normal(size=(1, 5, 5, 3))).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, 5, 12)).astype(np.float32)
    bias = rng.normal(size=(12,)).astype(np.float32)
    outputs, last_hidden, last_cell = ex.keras_convlstm_steps(inputs, cell, hidden, kernel, bias, forget_bias=0.7)
    weights = ex.keras_weights_from_fused(kernel, bias, 2, forget_bias=0.7)
    state = tf.constant(np.concatenate([cell, hidden], -1))
    for t in range(3):
        hidden, cell, forget = ex.reference_step(inputs[:, t], hidden, cell, weights)
        out, state = lab.convlstm_step(tf.constant(inputs[:, t]), state, kernel, bias, forget_bias=0.7)
        np.testing.assert_allclose(hidden, outputs[:, t], atol=1e-5)
        np.testing.assert_allclose(out.numpy(), outputs[:, t], atol=1e-5)
        assert 0.0 < forget.min() and forget.max() < 1.0
    np.testing.assert_allclose(cell, last_cell, atol=1e-5)
    np.testing.assert_allclose(hidden, last_hidden, atol=1e-5)


# ---- Exercise 3: carrying the state to the finer stage ----------------------------------------
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


def test_carry_state_right_answers_pass(capsys):
    assert verdict(capsys, ex.carry_state, lab.carry_state)[0]

    def with_a_keras_layer(state, kernel, bias):
        layer = keras.layers.Conv2DTranspose(kernel.shape[2], 2, strides=2, activation="relu")
        layer.build(state.shape)
        layer.set_weights([kernel.numpy(), bias.numpy()])
        return tf.split(layer(state), 2, axis=-1)
    assert verdict(capsys, ex.carry_state, with_a_keras_layer)[0]


@pytest.mark.parametrize("slip, expected", [
    (dict(relu=False), "ReLU after the transposed convolution is missing"),
    (dict(use_bias=False), "bias is missing"),
    (dict(swap=True), "swapped"),
])
def test_carry_state_slips_are_named(capsys, slip, expected):
    passed, out = verdict(capsys, ex.carry_state, make_carry(**slip))
    assert not passed and "not yet" in out and expected in out


def test_carry_state_wrong_shape(capsys):
    assert "twice the height" in verdict(capsys, ex.carry_state, lambda state, kernel, bias: tf.split(state, 2, -1))[1]


def test_hand_written_transposed_conv_matches_tensorflow():
    rng = np.random.default_rng(1)
    state = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    kernel = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)
    bias = rng.normal(size=(5,)).astype(np.float32)
    expected = tf.nn.conv2d_transpose(state, kernel, (2, 6, 4, 5), strides=2).numpy() + bias
    np.testing.assert_allclose(ex.transposed_conv_by_hand(state, kernel, bias), expected, atol=1e-5)


# ---- Exercise 4: the coarse-to-fine decoder -----------------------------------------------------
def zeros_state(features):
    return keras.ops.concatenate([keras.ops.zeros_like(features)] * 2, axis=-1)


class LastBlockFirst(lab.CFCM34):  # the old course's order
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        state = zeros_state(rungs[-1][-1])
        for stage in reversed(range(len(rungs))):
            if stage < len(rungs) - 1:
                state = self.carries[stage](state)
            for features in reversed(rungs[stage]):
                hidden, state = self.memories[stage](features, state)
        return self.head(hidden)


class NoCarry(lab.CFCM34):
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        for stage in reversed(range(len(rungs))):
            state = zeros_state(rungs[stage][0])
            for features in rungs[stage]:
                hidden, state = self.memories[stage](features, state)
        return self.head(hidden)


class StartsFromFeatures(lab.CFCM34):
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        state = keras.ops.concatenate([rungs[-1][-1]] * 2, axis=-1)
        for stage in reversed(range(len(rungs))):
            if stage < len(rungs) - 1:
                state = self.carries[stage](state)
            for features in rungs[stage]:
                hidden, state = self.memories[stage](features, state)
        return self.head(hidden)


class LastBlockOnly(lab.CFCM34):
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        state = zeros_state(rungs[-1][-1])
        for stage in reversed(range(len(rungs))):
            if stage < len(rungs) - 1:
                state = self.carries[stage](state)
            hidden, state = self.memories[stage](rungs[stage][-1], state)
        return self.head(hidden)


class FineToCoarse(lab.CFCM34):
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        state = zeros_state(rungs[0][0])
        for stage in range(len(rungs)):
            if stage > 0:
                state = self.carries[stage - 1](state)
            for features in rungs[stage]:
                hidden, state = self.memories[stage](features, state)
        return self.head(hidden)


class HeadOnState(lab.CFCM34):
    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        state = zeros_state(rungs[-1][-1])
        for stage in reversed(range(len(rungs))):
            if stage < len(rungs) - 1:
                state = self.carries[stage](state)
            for features in rungs[stage]:
                _, state = self.memories[stage](features, state)
        return self.head(state)


def test_decoder_right_answer_passes(capsys):
    passed, out = verdict(capsys, ex.decoder, lab.CFCM34)
    assert passed and "matches the reference decoder" in out


@pytest.mark.parametrize("wrong, expected", [
    (LastBlockFirst, "last first (the old course's order)"),
    (NoCarry, "every stage starts from zeros"),
    (StartsFromFeatures, "the memory must start empty"),
    (LastBlockOnly, "only the last block of each stage"),
    (FineToCoarse, "go from the deepest stage"),
    (HeadOnState, "self.head must read the last hidden state"),
])
def test_decoder_slips_are_named(capsys, wrong, expected):
    passed, out = verdict(capsys, ex.decoder, wrong)
    assert not passed and "not yet" in out and expected in out, out


def test_decoder_check_points_to_a_wrong_step_or_carry_first(capsys, monkeypatch):
    monkeypatch.setattr(lab, "convlstm_step", make_step(forget=0.0))
    assert "run ex.convlstm_step.check" in verdict(capsys, ex.decoder, lab.CFCM34)[1]
    monkeypatch.undo()
    monkeypatch.setattr(lab, "carry_state", make_carry(relu=False))
    assert "run ex.carry_state.check" in verdict(capsys, ex.decoder, lab.CFCM34)[1]


def test_memory_trace_follows_the_decoder_coarse_to_fine():
    keras.utils.set_random_seed(0)
    net = lab.CFCM34(2, layers=(1, 2, 1, 1))
    image = np.random.default_rng(0).uniform(size=(32, 32)).astype(np.float32)
    prob = net(tf.constant(image[None, ..., None]), training=False).numpy()
    trace = ex.memory_trace(net, image)
    assert [(e["stage"], e["step"], e["steps"]) for e in trace] == [(4, 1, 1), (3, 1, 1), (2, 1, 2), (2, 2, 2), (1, 1, 1)]
    assert trace[0]["hidden"].shape == (2, 2, 16) and trace[-1]["forget"].shape == (16, 16, 2)
    assert all(e["hidden"].min() >= 0 and 0 < e["forget"].min() and e["forget"].max() < 1 for e in trace)
    hidden = ex.reference_decoder(net, image[None, ..., None])
    np.testing.assert_allclose(hidden[0], trace[-1]["hidden"])
    np.testing.assert_allclose(net.head(tf.constant(hidden)).numpy(), prob, atol=1e-5)


def test_solutions_come_from_the_notebook(capsys):
    from labkit.labs.cfcm_solutions import SOLUTIONS

    for exercise, code in ((ex.dice_score, "def dice_score("), (ex.convlstm_step, "def convlstm_step("),
                           (ex.carry_state, "def carry_state("), (ex.decoder, "def call(self, image")):
        exercise.solution()
        output = capsys.readouterr().out
        assert output.startswith(f"{exercise.label} - one possible solution") and code in output
        assert SOLUTIONS[exercise.number][0] == exercise.title  # numbered and titled as in the notebook
