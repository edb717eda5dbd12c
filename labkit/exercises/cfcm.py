"""Lab 2 (CFCM, chest X-ray) exercises: ``ex_convlstm_step``, ``ex_dice_score``, ``ex_carry_state``.

Every check compares the student's function with a trusted peer on seeded random inputs:
``keras.layers.ConvLSTM2D`` with the weights mapped from the course's fused layout, NumPy
arithmetic written out pixel by pixel, or hand-computed values. When the answer is wrong the
check tries the usual slips (a missing forget bias, tanh instead of ReLU, gates in another
order, cell and hidden swapped, no threshold) and says which one it found.

Example:
    >>> from labkit.exercises import cfcm as ex          # doctest: +SKIP
    >>> ex.ex_dice_score.check(dice_score)                # doctest: +SKIP
    Exercise 1 (binarised Dice score): correct - ...
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labkit.exercises.base import CheckFailed, Exercise  # noqa: E402

TOLERANCE = 1e-4
GATE_NAMES = ("i (input gate)", "j (update)", "f (forget gate)", "o (output gate)")


# ----------------------------------------------------------------------------------------------
# The trusted peer: keras.layers.ConvLSTM2D with weights mapped from the fused i, j, f, o kernel
# ----------------------------------------------------------------------------------------------
def keras_weights_from_fused(kernel, bias, input_channels: int, forget_bias: float = 1.0):
    """Map the course's fused ConvLSTM weights to ``keras.layers.ConvLSTM2D`` weights.

    The course (and the original CFCM code) convolves ``concat(input, hidden)`` with ONE kernel
    of shape ``(k, k, input_channels + C, 4C)`` whose output channels are the gates in the order
    i, j, f, o, and adds ``forget_bias`` to f at run time. Keras keeps two kernels (one over the
    input, one over the hidden state) with the gates ordered i, f, c (= j), o, and one bias.
    The exercise checks, the tests and ``benchmarks/bench_cfcm.py`` use this one mapping.

    Args:
        kernel: fused kernel, ``(k, k, input_channels + C, 4C)``.
        bias: fused bias, ``(4C,)``.
        input_channels: channels of the input (the rest of the kernel's input axis is hidden).
        forget_bias: the constant the course adds to the forget gate; folded into Keras' bias.

    Returns:
        ``[kernel, recurrent_kernel, bias]`` for ``ConvLSTM2D.set_weights``.

    Example:
        >>> layer.set_weights(keras_weights_from_fused(kernel, bias, 3))  # doctest: +SKIP
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    i, j, f, o = np.split(kernel, 4, axis=-1)
    reordered = np.concatenate([i, f, j, o], axis=-1)
    bias_i, bias_j, bias_f, bias_o = np.split(bias, 4)
    keras_bias = np.concatenate([bias_i, bias_f + forget_bias, bias_j, bias_o])
    return [reordered[:, :, :input_channels], reordered[:, :, input_channels:], keras_bias]


def keras_convlstm_steps(sequence, cell, hidden, kernel, bias, forget_bias=1.0, activation="relu"):
    """Run ``keras.layers.ConvLSTM2D`` with the fused weights over ``sequence`` (B, T, H, W, Cin).

    Starts from ``(cell, hidden)``; returns the outputs of every step, the last hidden state
    and the last cell state as NumPy arrays.
    """
    sequence = np.asarray(sequence, np.float32)
    filters, size = int(np.shape(bias)[0]) // 4, int(np.shape(kernel)[0])
    layer = keras.layers.ConvLSTM2D(filters, size, padding="same", activation=activation,
                                    recurrent_activation="sigmoid", return_sequences=True,
                                    return_state=True, dtype="float32")
    layer.build((None, None, *sequence.shape[2:]))
    layer.set_weights(keras_weights_from_fused(kernel, bias, sequence.shape[-1], forget_bias))
    outputs, last_hidden, last_cell = layer(sequence, initial_state=[tf.constant(hidden), tf.constant(cell)])
    return np.asarray(outputs), np.asarray(last_hidden), np.asarray(last_cell)


# ----------------------------------------------------------------------------------------------
# Exercise 2: one ConvLSTM step
# ----------------------------------------------------------------------------------------------
def _convlstm_case(seed: int = 7):
    rng = np.random.default_rng(seed)
    batch, height, width, input_channels, filters = 2, 6, 5, 3, 4
    inputs = rng.normal(size=(batch, height, width, input_channels)).astype(np.float32)
    cell = np.abs(rng.normal(size=(batch, height, width, filters))).astype(np.float32)
    hidden = np.abs(rng.normal(size=(batch, height, width, filters))).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, input_channels + filters, 4 * filters)).astype(np.float32)
    bias = rng.normal(scale=0.2, size=(4 * filters,)).astype(np.float32)
    return inputs, cell, hidden, kernel, bias


def _as_array(value, what: str) -> np.ndarray:
    if value is None:
        raise CheckFailed(f"{what} is None - did you forget a `return`?")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise CheckFailed(f"{what} is a {type(value).__name__}, not a tensor ({error})") from None


def _unpack_step(result, batch_shape, filters):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed("return two things, `new_hidden, new_state`, where new_state = "
                          "concat([new_cell, new_hidden], axis=-1)")
    hidden = _as_array(result[0], "new_hidden")
    state = _as_array(result[1], "new_state")
    expected_hidden = (*batch_shape, filters)
    if hidden.shape != expected_hidden:
        raise CheckFailed(f"new_hidden has shape {hidden.shape}, expected {expected_hidden} "
                          f"(C = {filters} channels, same height and width as the input)")
    if state.shape != (*batch_shape, 2 * filters):
        raise CheckFailed(f"new_state has shape {state.shape}, expected {(*batch_shape, 2 * filters)}: "
                          f"concatenate new_cell and new_hidden on the last axis")
    return hidden, state


def _step_slips(inputs, cell, hidden, kernel, bias):
    """Peers with the usual mistakes, to say what went wrong: name -> (hidden, cell)."""
    sequence = inputs[:, None]
    slips = {
        "the forget bias (+1.0 on f) is missing": dict(forget_bias=0.0),
        "the update and the new hidden state use tanh; CFCM uses ReLU": dict(activation="tanh"),
    }
    found = {}
    for name, changes in slips.items():
        arguments = dict(forget_bias=1.0, activation="relu") | changes
        _, slip_hidden, slip_cell = keras_convlstm_steps(sequence, cell, hidden, kernel, bias, **arguments)
        found[name] = (slip_hidden, slip_cell)
    return found


def check_convlstm_step(convlstm_step):
    """Compare ``convlstm_step(inputs, state, kernel, bias)`` with ``keras.layers.ConvLSTM2D``."""
    if not callable(convlstm_step):
        raise CheckFailed(f"pass your function itself, e.g. check(convlstm_step); got a {type(convlstm_step).__name__}")
    inputs, cell, hidden, kernel, bias = _convlstm_case()
    filters = cell.shape[-1]
    state = np.concatenate([cell, hidden], axis=-1)
    result = convlstm_step(tf.constant(inputs), tf.constant(state), tf.constant(kernel), tf.constant(bias))
    new_hidden, new_state = _unpack_step(result, inputs.shape[:3], filters)
    _, peer_hidden, peer_cell = keras_convlstm_steps(inputs[:, None], cell, hidden, kernel, bias)
    new_cell, state_hidden = new_state[..., :filters], new_state[..., filters:]
    hidden_error = float(np.max(np.abs(new_hidden - peer_hidden)))
    cell_error = float(np.max(np.abs(new_cell - peer_cell)))
    if hidden_error <= TOLERANCE and cell_error <= TOLERANCE:
        if float(np.max(np.abs(state_hidden - new_hidden))) > TOLERANCE:
            raise CheckFailed("new_hidden is right but the second half of new_state is not new_hidden")
        return "matches keras.layers.ConvLSTM2D with mapped weights"
    _diagnose_step(new_hidden, new_cell, peer_hidden, peer_cell, inputs, cell, hidden, kernel, bias)
    raise CheckFailed(f"new_hidden differs from keras.layers.ConvLSTM2D by up to {hidden_error:.3g} and "
                      f"new_cell by up to {cell_error:.3g}; check the gate order i, j, f, o and "
                      f"cell = sigmoid(f + 1) * cell + sigmoid(i) * relu(j)")


def _close(first, second) -> bool:
    return float(np.max(np.abs(first - second))) <= TOLERANCE


def _diagnose_step(new_hidden, new_cell, peer_hidden, peer_cell, inputs, cell, hidden, kernel, bias):
    if _close(new_cell, peer_hidden) and _close(new_hidden, peer_cell):
        raise CheckFailed("cell and hidden are swapped: the state is concat([cell, hidden]) - cell first")
    if _close(new_cell, peer_cell):
        raise CheckFailed("new_cell is right but new_hidden is not: new_hidden = sigmoid(o) * relu(new_cell)")
    for name, (slip_hidden, slip_cell) in _step_slips(inputs, cell, hidden, kernel, bias).items():
        if _close(new_hidden, slip_hidden) and _close(new_cell, slip_cell):
            raise CheckFailed(name)
    split = np.split(kernel, 4, axis=-1), np.split(bias, 4)
    for order in ((0, 2, 1, 3), (2, 0, 1, 3), (0, 1, 3, 2)):
        permuted_kernel = np.concatenate([split[0][k] for k in order], axis=-1)
        permuted_bias = np.concatenate([split[1][k] for k in order])
        _, slip_hidden, slip_cell = keras_convlstm_steps(inputs[:, None], cell, hidden, permuted_kernel, permuted_bias)
        if _close(new_hidden, slip_hidden) and _close(new_cell, slip_cell):
            used = ", ".join(GATE_NAMES[k].split()[0] for k in np.argsort(order))
            raise CheckFailed(f"you split the gates as {used}; the 4C channels are ordered i, j, f, o")



ex_convlstm_step = Exercise(
    2, "one ConvLSTM step", check_convlstm_step,
    hints=[
        "Split the state into cell and hidden (cell first), concatenate the input with hidden, "
        "convolve once to 4C channels and split that into i, j, f, o.",
        "tf.nn.conv2d(x, kernel, strides=1, padding='SAME') + bias; tf.split(features, 4, axis=-1).",
        "new_cell = sigmoid(f + forget_bias) * cell + sigmoid(i) * relu(j); "
        "new_hidden = sigmoid(o) * relu(new_cell); new_state = concat([new_cell, new_hidden], -1).",
    ],
    lab="cfcm",
)


# ----------------------------------------------------------------------------------------------
# Exercise 1: the binarised Dice score
# ----------------------------------------------------------------------------------------------
def _square(size, top, left, side, value=1.0):
    image = np.zeros((size, size), np.float32)
    image[top:top + side, left:left + side] = value
    return image


def _dice_cases():
    """(name, prob, label, expected) with Dice values worked out by hand."""
    size = 16
    label_a = _square(size, 2, 2, 4)                   # 16 pixels
    pred_half = _square(size, 2, 4, 4, value=0.6)      # 16 pixels of 0.6, 8 overlap -> 2*8/32
    pred_low = _square(size, 2, 2, 4, value=0.4)       # under the threshold: empty after binarising
    label_b = _square(size, 8, 8, 6)                   # 36 pixels
    pred_b = _square(size, 8, 8, 6, value=0.9)         # perfect after binarising
    empty = np.zeros((size, size), np.float32)
    batch = lambda *images: np.stack(images)[..., None]  # noqa: E731
    return [
        ("a perfect prediction of probability 0.9", batch(pred_b), batch(label_b), 1.0),
        ("half of a 4x4 square at probability 0.6", batch(pred_half), batch(label_a), 0.5),
        ("a prediction under the 0.5 threshold", batch(pred_low), batch(label_a), 0.0),
        ("a batch of two images (Dice 1.0 and 0.5)", batch(pred_b, pred_half), batch(label_b, label_a), 0.75),
        ("an image without lung, predicted empty", batch(empty), batch(empty), 1.0),
    ]


def check_dice_score(dice_score):
    """Compare ``dice_score(prob, label)`` with hand-computed values and ``labkit.metrics.dice``."""
    if not callable(dice_score):
        raise CheckFailed(f"pass your function itself, e.g. check(dice_score); got a {type(dice_score).__name__}")
    for name, pred, label, expected in _dice_cases():
        value = _as_array(dice_score(tf.constant(pred), tf.constant(label)), "your score")
        if value.size != 1:
            raise CheckFailed(f"for {name} you returned shape {value.shape}; return one number, the mean over the batch")
        value = float(value.reshape(()))
        if abs(value - expected) > 1e-3:
            raise CheckFailed(_dice_slip(name, value, expected, pred, label))
    _compare_with_metrics(dice_score)
    return "binarised at 0.5, averaged over the batch, agrees with labkit.metrics.dice"


def _dice_slip(name, value, expected, pred, label):
    if not label.any():
        return (f"for {name} you gave {value:.3f}, expected {expected:.3f}: add eps to the numerator too, "
                f"(2 * overlap + eps) / (pixels in pred + pixels in label + eps), so two empty masks match")
    soft = 2 * np.sum(pred * label, axis=(1, 2, 3)) / (np.sum(pred ** 2 + label ** 2, axis=(1, 2, 3)) + 1e-3)
    binary = (pred > 0.5).astype(np.float32)
    per_image = 2 * np.sum(binary * label, axis=(1, 2, 3)) / (np.sum(binary + label, axis=(1, 2, 3)) + 1e-3)
    pooled = 2 * np.sum(binary * label) / (np.sum(binary + label) + 1e-3)
    if abs(value - float(np.mean(soft))) < 1e-3:
        return f"for {name} you gave {value:.3f} (the soft Dice), expected {expected:.3f}: binarise the prediction at 0.5 first"
    if pred.shape[0] > 1 and abs(value - float(pooled)) < 1e-3 and abs(float(pooled) - float(np.mean(per_image))) > 1e-3:
        return (f"for {name} you gave {value:.3f}, expected {expected:.3f}: compute Dice per image "
                f"(sum over height, width, channels), then average over the batch")
    return f"for {name} you gave {value:.3f}, expected {expected:.3f} (2 * overlap / (pixels in pred + pixels in label))"


def _compare_with_metrics(dice_score):
    from labkit.metrics import dice as reference_dice

    rng = np.random.default_rng(3)
    pred = rng.uniform(size=(3, 12, 12, 1)).astype(np.float32)
    label = (rng.uniform(size=(3, 12, 12, 1)) > 0.5).astype(np.float32)
    expected = float(np.mean([reference_dice(pred[k, ..., 0] > 0.5, label[k, ..., 0] > 0.5) for k in range(3)]))
    value = float(np.asarray(dice_score(tf.constant(pred), tf.constant(label))).reshape(()))
    if abs(value - expected) > 1e-3:
        raise CheckFailed(f"on random masks you gave {value:.4f}, labkit.metrics.dice gives {expected:.4f}")


ex_dice_score = Exercise(
    1, "binarised Dice score", check_dice_score,
    hints=[
        "Threshold the probabilities first: a pixel is lung when prob > 0.5.",
        "Per image: (2 * sum(pred * label) + eps) / (sum(pred) + sum(label) + eps), summing over axes "
        "1, 2, 3; eps in both places makes two empty masks a perfect match (Dice 1).",
        "pred = tf.cast(prob > 0.5, tf.float32); then tf.reduce_mean of the per-image Dice.",
    ],
    lab="cfcm",
)


# ----------------------------------------------------------------------------------------------
# Exercise 3: carrying the state to the next, finer level
# ----------------------------------------------------------------------------------------------
def transposed_conv_by_hand(state, kernel, bias):
    """A 2x2, stride-2 transposed convolution written pixel by pixel in NumPy.

    With a 2x2 kernel and stride 2 the output blocks do not overlap: coarse pixel (y, x)
    paints the 2x2 block at (2y + dy, 2x + dx) with ``state[y, x] @ kernel[dy, dx].T + bias``
    (Keras' layout is ``kernel[dy, dx, out, in]``).
    """
    batch, height, width, _ = state.shape
    out = np.zeros((batch, 2 * height, 2 * width, kernel.shape[2]), np.float32)
    for dy in range(2):
        for dx in range(2):
            out[:, dy::2, dx::2, :] = np.einsum("bhwc,oc->bhwo", state, kernel[dy, dx]) + bias
    return out


def _carry_case(seed: int = 11):
    rng = np.random.default_rng(seed)
    coarse_filters, fine_filters = 6, 3
    state = np.abs(rng.normal(size=(2, 3, 4, 2 * coarse_filters))).astype(np.float32)
    kernel = rng.normal(scale=0.5, size=(2, 2, 2 * fine_filters, 2 * coarse_filters)).astype(np.float32)
    bias = rng.normal(scale=0.3, size=(2 * fine_filters,)).astype(np.float32)
    return state, kernel, bias


def check_carry_state(carry_state):
    """Compare ``carry_state(state, kernel, bias) -> (cell, hidden)`` with the pixel-by-pixel peer."""
    if not callable(carry_state):
        raise CheckFailed(f"pass your function itself, e.g. check(carry_state); got a {type(carry_state).__name__}")
    state, kernel, bias = _carry_case()
    result = carry_state(tf.constant(state), tf.constant(kernel), tf.constant(bias))
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed("return two tensors, `cell, hidden`, for the finer level")
    cell, hidden = _as_array(result[0], "cell"), _as_array(result[1], "hidden")
    fine = kernel.shape[2] // 2
    expected_shape = (state.shape[0], 2 * state.shape[1], 2 * state.shape[2], fine)
    for what, value in (("cell", cell), ("hidden", hidden)):
        if value.shape != expected_shape:
            raise CheckFailed(f"{what} has shape {value.shape}, expected {expected_shape}: twice the height "
                              f"and width, and half of the {2 * fine} output channels")
    linear = transposed_conv_by_hand(state, kernel, bias)
    peer = np.maximum(linear, 0.0)
    got = np.concatenate([cell, hidden], axis=-1)
    if _close(got, peer):
        return "matches a 2x2 stride-2 transposed convolution written pixel by pixel"
    raise CheckFailed(_carry_slip(got, peer, linear, state, kernel, fine))


def _carry_slip(got, peer, linear, state, kernel, fine):
    if _close(got, np.concatenate([peer[..., fine:], peer[..., :fine]], axis=-1)):
        return "cell and hidden are swapped: the first half of the channels is the cell"
    if _close(got, linear):
        return "the ReLU after the transposed convolution is missing"
    if _close(got, np.maximum(transposed_conv_by_hand(state, kernel, np.zeros(kernel.shape[2], np.float32)), 0)):
        return "the bias is missing"
    error = float(np.max(np.abs(got - peer)))
    return (f"differs from the pixel-by-pixel transposed convolution by up to {error:.3g}; use "
            f"tf.nn.conv2d_transpose with strides=2 and output_shape (batch, 2H, 2W, {2 * fine}), or "
            f"a keras.layers.Conv2DTranspose with these weights")


ex_carry_state = Exercise(
    3, "carry the state to the finer level", check_carry_state,
    hints=[
        "The state (cell and hidden, 2C channels) goes through ONE transposed convolution, kernel 2, "
        "stride 2, to 2C' channels, then a ReLU; the result is split into the finer cell and hidden.",
        "tf.nn.conv2d_transpose needs output_shape: (batch, 2 * height, 2 * width, kernel.shape[2]); "
        "take batch, height and width from tf.shape(state).",
        "up = tf.nn.relu(tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2) + bias); "
        "cell, hidden = tf.split(up, 2, axis=-1).",
    ],
    lab="cfcm",
)

__all__ = ["ex_carry_state", "ex_convlstm_step", "ex_dice_score", "keras_convlstm_steps",
           "keras_weights_from_fused", "transposed_conv_by_hand"]
