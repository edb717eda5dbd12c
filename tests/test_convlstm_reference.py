"""Lab 2's hand-written ConvLSTM cell and models, checked against Keras and analytic values.

The code under test is the notebook's: its ``export`` cells are exported to a temporary module
(the same code ``make export`` writes to ``labkit/labs/cfcm.py``), so this file always tests the
notebook as it stands.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from labkit.exercises.cfcm import keras_weights_from_fused  # noqa: E402

pytestmark = pytest.mark.tf
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_cfcm_lung.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import export

    labs = tmp_path_factory.mktemp("labs")
    export.export(NOTEBOOK, labs)
    spec = importlib.util.spec_from_file_location("cfcm_from_notebook", export.target_for(NOTEBOOK, labs))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_sequence(seed, steps=3, size=7, input_channels=3, filters=4):
    rng = np.random.default_rng(seed)
    sequence = rng.normal(size=(2, steps, size, size, input_channels)).astype(np.float32)
    cell = np.abs(rng.normal(size=(2, size, size, filters))).astype(np.float32)
    hidden = np.abs(rng.normal(size=(2, size, size, filters))).astype(np.float32)
    return sequence, cell, hidden


@pytest.mark.parametrize("forget_bias", [1.0, 0.0])
def test_cell_matches_keras_convlstm2d_with_mapped_weights(lab, forget_bias):
    sequence, cell, hidden = random_sequence(seed=3)
    cell = cell - 1.0  # a signed cell state: the ReLU on the cell matters
    filters, input_channels = cell.shape[-1], sequence.shape[-1]
    mine = lab.ConvLSTMCell(filters, forget_bias=forget_bias, dtype="float32")
    state = tf.constant(np.concatenate([cell, hidden], axis=-1))
    outputs = []
    for step in range(sequence.shape[1]):
        output, state = mine(sequence[:, step], state)
        outputs.append(output.numpy())

    reference = keras.layers.ConvLSTM2D(filters, 3, padding="same", activation="relu",
                                        recurrent_activation="sigmoid", return_sequences=True,
                                        return_state=True, dtype="float32")
    reference.build(sequence.shape)
    kernel, bias = mine.gates.get_weights()
    assert kernel.shape == (3, 3, input_channels + filters, 4 * filters)
    reference.set_weights(keras_weights_from_fused(kernel, bias, input_channels, forget_bias))
    expected, last_hidden, last_cell = reference(sequence, initial_state=[hidden, cell])

    np.testing.assert_allclose(np.stack(outputs, axis=1), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(state.numpy()[..., :filters], last_cell.numpy(), atol=1e-5)
    np.testing.assert_allclose(state.numpy()[..., filters:], last_hidden.numpy(), atol=1e-5)


def test_state_carry_is_the_transposed_convolution_with_relu(lab):
    from labkit.exercises.cfcm import transposed_conv_by_hand

    carry = lab.StateCarry(6, dtype="float32")
    state = np.random.default_rng(4).normal(size=(2, 3, 4, 12)).astype(np.float32)
    out = carry(tf.constant(state)).numpy()
    kernel, bias = carry.get_weights()
    assert out.shape == (2, 6, 8, 6) and kernel.shape == (2, 2, 6, 12)
    np.testing.assert_allclose(out, np.maximum(transposed_conv_by_hand(state, kernel, bias), 0.0), atol=1e-5)


def test_forget_bias_alone_keeps_sigmoid_one_of_the_memory(lab):
    mine = lab.ConvLSTMCell(2, dtype="float32")
    inputs = tf.ones((1, 4, 4, 3))
    cell = tf.fill((1, 4, 4, 2), 2.0)
    state = tf.concat([cell, tf.zeros_like(cell)], axis=-1)
    mine(inputs, state)  # build
    mine.gates.set_weights([np.zeros_like(w) for w in mine.gates.get_weights()])
    hidden, new_state = mine(inputs, state)
    sigmoid_one = 1.0 / (1.0 + np.exp(-1.0))
    # gates: i = f - 1 = o = 0 -> sigmoid 0.5; update ReLU(0) = 0; new cell = sigmoid(1) * 2
    np.testing.assert_allclose(new_state.numpy()[..., :2], 2.0 * sigmoid_one, rtol=1e-6)
    np.testing.assert_allclose(hidden.numpy(), 0.5 * 2.0 * sigmoid_one, rtol=1e-6)


def test_cell_weights_are_created_once(lab):
    mine = lab.ConvLSTMCell(3)
    state = tf.zeros((1, 5, 5, 6))
    mine(tf.ones((1, 5, 5, 2)), state)
    count = len(mine.weights)
    mine(tf.ones((1, 5, 5, 2)), state)
    assert count == 2 and len(mine.weights) == count


@pytest.mark.slow
@pytest.mark.parametrize("build", [
    lambda lab: lab.CFCM34(2),
    lambda lab: lab.LadderNet(2, fusion="sum"),
    lambda lab: lab.LadderNet(2, fusion="concat"),
    lambda lab: lab.ResidualLadderNet(2),
])
def test_models_map_an_image_to_probabilities_of_its_size(lab, build):
    net = build(lab)
    image = tf.random.uniform((2, 32, 32, 1), seed=1)
    pred = net(image, training=False).numpy()
    assert pred.shape == (2, 32, 32, 1) and pred.dtype == np.float32
    assert 0.0 <= pred.min() and pred.max() <= 1.0


def test_encoder_returns_every_block_output(lab):
    rungs = lab.LadderEncoder(2)(tf.zeros((1, 32, 32, 1)))
    assert [len(stage) for stage in rungs] == [3, 4, 6, 3]
    assert [tuple(stage[0].shape) for stage in rungs] == [(1, 16, 16, 2), (1, 8, 8, 4), (1, 4, 4, 8), (1, 2, 2, 16)]


def test_basic_block_really_normalises(lab):
    """The old batch_norm_relu skipped BatchNorm; every block here has two of them, used in training."""
    block = lab.BasicBlock(4, project=True)
    block(tf.zeros((1, 8, 8, 2)))
    norms = [layer for layer in (block.norm1, block.norm2) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 2
    before = block.norm1.moving_mean.numpy().copy()
    block(tf.random.uniform((4, 8, 8, 2), 1.0, 2.0, seed=2), training=True)
    assert not np.allclose(before, block.norm1.moving_mean.numpy())


def test_unknown_fusion_is_a_clear_error(lab):
    with pytest.raises(ValueError, match="fusion must be 'sum' or 'concat'"):
        lab.LadderNet(2, fusion="average")


def test_dice_loss_and_score_on_known_masks(lab):
    label = np.zeros((2, 8, 8, 1), np.float32)
    label[:, 2:6, 2:6] = 1.0
    assert float(lab.dice_loss(tf.constant(label), tf.constant(label))) == pytest.approx(0.0, abs=1e-4)
    assert float(lab.dice_loss(tf.constant(1.0 - label), tf.constant(label))) == pytest.approx(1.0, abs=1e-4)
    half = label.copy()
    half[:, 2:6, 2:4] = 0.0
    assert float(lab.dice_score(tf.constant(half * 0.9), tf.constant(label))) == pytest.approx(2 * 8 / 24, abs=1e-4)


@pytest.mark.slow
def test_training_steps_lower_the_loss(lab):
    keras.utils.set_random_seed(0)
    net = lab.CFCM34(2, layers=(1, 2, 1, 1))  # a short ladder: quick to trace, same code path
    optimizer = keras.optimizers.Adam(1e-2)
    train_step, validation_step = lab.make_steps(net, optimizer)
    image = tf.random.uniform((2, 32, 32, 1), seed=4)
    label = tf.cast(image > 0.5, tf.float32)
    first, _ = train_step(image, label)
    for _ in range(5):
        loss, _ = train_step(image, label)
    assert float(loss) < float(first)
    _, score, pred = validation_step(image, label)
    assert pred.shape == (2, 32, 32, 1) and 0.0 <= float(score) <= 1.0


def test_authors_baseline_has_one_residual_block_per_rung(lab):
    net = lab.ResidualLadderNet(2, layers=(1, 2, 1, 1))
    assert net(tf.zeros((1, 32, 32, 1))).shape == (1, 32, 32, 1)
    assert [len(blocks) for blocks in net.rung_blocks] == [1, 2, 1, 1]
    assert all(block.projection is not None for blocks in net.rung_blocks for block in blocks)
