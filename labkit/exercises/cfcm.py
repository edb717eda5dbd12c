"""Lab 2 (CFCM, chest X-ray) exercises: ``dice_score``, ``convlstm_step``, ``carry_state``, ``decoder``.

Every check compares the student's code with a trusted peer on seeded random inputs, never with
a copy of the solution: hand-computed Dice values and ``labkit.metrics.dice``;
``keras.layers.ConvLSTM2D`` with the weights mapped from the course's fused layout; a
transposed convolution written out pixel by pixel; and for the decoder a reference written
in the textbook form (separate input and recurrent convolutions), run on the student's model's
own weights. When the answer is wrong the check tries the usual slips and says which one it
found. :func:`memory_trace` replays the reference decoder step by step for the notebook's pictures.

Example:
    >>> from labkit.exercises import cfcm as ex          # doctest: +SKIP
    >>> ex.dice_score.check(dice_score)                   # doctest: +SKIP
    Exercise 1 (binarised Dice score): correct - ...
"""

from __future__ import annotations

import os
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labkit.exercises.base import CheckFailed, Exercise  # noqa: E402

TOLERANCE = 1e-4


# ---- the trusted peers ------------------------------------------------------------------------
def keras_weights_from_fused(kernel, bias, input_channels: int, forget_bias: float = 1.0):
    """Map the course's fused ConvLSTM weights to ``keras.layers.ConvLSTM2D`` weights.

    The course (and the CFCM authors' code) convolves ``concat(input, hidden)`` with ONE kernel
    of shape ``(k, k, input_channels + C, 4C)`` whose output channels are i, g, f, o (the
    authors call the update ``j``) and adds ``forget_bias`` to f at run time. Keras keeps a
    kernel over the input and a recurrent kernel over the hidden state, gates ordered
    i, f, c (= g), o, and one bias. The checks, the tests and ``benchmarks/`` use this mapping.

    Returns:
        ``[kernel, recurrent_kernel, bias]`` for ``ConvLSTM2D.set_weights``.

    Example:
        >>> layer.set_weights(keras_weights_from_fused(kernel, bias, 3))  # doctest: +SKIP
    """
    i, g, f, o = np.split(np.asarray(kernel, np.float32), 4, axis=-1)
    reordered = np.concatenate([i, f, g, o], axis=-1)
    bias_i, bias_g, bias_f, bias_o = np.split(np.asarray(bias, np.float32), 4)
    keras_bias = np.concatenate([bias_i, bias_f + forget_bias, bias_g, bias_o])
    return [reordered[:, :, :input_channels], reordered[:, :, input_channels:], keras_bias]


def keras_convlstm_steps(sequence, cell, hidden, kernel, bias, forget_bias=1.0):
    """``keras.layers.ConvLSTM2D`` (ReLU, as in CFCM) with the fused weights over ``sequence``
    (B, T, H, W, Cin) from ``(cell, hidden)``: every step's output, the last hidden and cell."""
    sequence = np.asarray(sequence, np.float32)
    layer = keras.layers.ConvLSTM2D(int(np.shape(bias)[0]) // 4, int(np.shape(kernel)[0]), padding="same",
                                    activation="relu", recurrent_activation="sigmoid", return_sequences=True,
                                    return_state=True, dtype="float32")
    layer.build((None, None, *sequence.shape[2:]))
    layer.set_weights(keras_weights_from_fused(kernel, bias, sequence.shape[-1], forget_bias))
    outputs, last_hidden, last_cell = layer(sequence, initial_state=[tf.constant(hidden), tf.constant(cell)])
    return np.asarray(outputs), np.asarray(last_hidden), np.asarray(last_cell)


def reference_step(inputs, hidden, cell, keras_weights):
    """One ConvLSTM step in the textbook form (W_x * x_t + W_h * h_{t-1} + b per gate) on Keras'
    weight layout, ReLU update and output: ``(h_t, c_t, f_t)``, the forget gate included."""
    kernel, recurrent, bias = (np.split(np.asarray(w, np.float32), 4, axis=-1) for w in keras_weights)
    conv = lambda x, w: tf.nn.conv2d(np.asarray(x, np.float32), w, 1, "SAME").numpy()  # noqa: E731
    i, f, g, o = (conv(inputs, kernel[k]) + conv(hidden, recurrent[k]) + bias[k] for k in range(4))
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    new_cell = sigmoid(f) * cell + sigmoid(i) * np.maximum(g, 0.0)
    return sigmoid(o) * np.maximum(new_cell, 0.0), new_cell, sigmoid(f)


def transposed_conv_by_hand(state, kernel, bias):
    """A 2x2, stride-2 transposed convolution written pixel by pixel in NumPy.

    With a 2x2 kernel and stride 2 the output blocks do not overlap: coarse pixel (y, x) paints
    the block at (2y + dy, 2x + dx) with ``state[y, x] @ kernel[dy, dx].T + bias`` (Keras'
    ``Conv2DTranspose`` layout is ``kernel[dy, dx, out, in]``).
    """
    batch, height, width, _ = state.shape
    out = np.zeros((batch, 2 * height, 2 * width, kernel.shape[2]), np.float32)
    for dy in range(2):
        for dx in range(2):
            out[:, dy::2, dx::2, :] = np.einsum("bhwc,oc->bhwo", state, kernel[dy, dx]) + bias
    return out


@contextmanager
def _float32_policy():
    """Build models in float32 even when the notebook runs under mixed precision."""
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def _callable(function, name):
    if not callable(function):
        raise CheckFailed(f"pass your {name} itself, e.g. check({name}); got a {type(function).__name__}")


def _as_array(value, what: str) -> np.ndarray:
    if value is None:
        raise CheckFailed(f"{what} is None - did you forget a `return`?")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise CheckFailed(f"{what} is a {type(value).__name__}, not a tensor ({error})") from None


def _close(first, second) -> bool:
    return np.shape(first) == np.shape(second) and float(np.max(np.abs(first - second))) <= TOLERANCE


# ---- Exercise 1: the binarised Dice score -----------------------------------------------------
def _square(top, left, side, value=1.0, size=16):
    image = np.zeros((size, size), np.float32)
    image[top:top + side, left:left + side] = value
    return image


def _dice_cases():
    """(name, prob, label, expected) with Dice values worked out by hand (batches of 2D images)."""
    label_a, half = _square(2, 2, 4), _square(2, 4, 4, 0.6)  # 16 pixels; 8 of 16 + 16 overlap
    label_b, sure = _square(8, 8, 6), _square(8, 8, 6, 0.9)
    empty, batch = np.zeros((16, 16), np.float32), lambda *images: np.stack(images)[..., None]
    return [("a perfect prediction of probability 0.9", batch(sure), batch(label_b), 1.0),
            ("half of a 4x4 square at probability 0.6", batch(half), batch(label_a), 0.5),
            ("a prediction under the 0.5 threshold", batch(_square(2, 2, 4, 0.4)), batch(label_a), 0.0),
            ("a batch of two images (Dice 1.0 and 0.5)", batch(sure, half), batch(label_b, label_a), 0.75),
            ("an image without lung, predicted empty", batch(empty), batch(empty), 1.0),
            ("an image without lung, predicted with some", batch(half), batch(empty), 0.0)]


def check_dice_score(dice_score):
    """Run ``dice_score(prob, label)`` inside ``tf.function`` (as the training step does) on
    hand-computed cases, then compare it with ``labkit.metrics.dice`` on random masks."""
    _callable(dice_score, "dice_score")
    compiled = tf.function(dice_score)
    for name, prob, label, expected in _dice_cases():
        value = _as_array(_in_graph(compiled, dice_score, prob, label), "your score")
        if value.size != 1:
            raise CheckFailed(f"for {name} you returned shape {value.shape}; return one number, the mean over the batch")
        if not abs(float(value.reshape(())) - expected) <= 1e-3:  # NaN fails too
            raise CheckFailed(_dice_slip(name, float(value.reshape(())), expected, prob, label))
    from labkit.metrics import dice as reference_dice

    rng = np.random.default_rng(3)
    prob, label = rng.uniform(size=(3, 12, 12, 1)).astype(np.float32), (rng.uniform(size=(3, 12, 12, 1)) > 0.5)
    expected = float(np.mean([reference_dice(prob[k] > 0.5, label[k]) for k in range(3)]))
    value = float(np.asarray(compiled(tf.constant(prob), tf.constant(label, tf.float32))).reshape(()))
    if not abs(value - expected) <= 1e-3:
        raise CheckFailed(f"on random masks you gave {value:.4f}, labkit.metrics.dice gives {expected:.4f}")
    return "works inside tf.function, agrees with labkit.metrics.dice (empty masks included)"


def _in_graph(compiled, eager, prob, label):
    prob, label = tf.constant(prob), tf.constant(label)
    try:
        return compiled(prob, label)
    except Exception as error:  # any failure while tracing: say why it matters
        try:
            eager(prob, label)
        except Exception:  # it fails eagerly too: report the student's own error
            raise error from None
        raise CheckFailed("your score works on eager tensors but not inside tf.function, where the "
                          "training step runs it: use TensorFlow operations (tf.reduce_sum, tf.cast, "
                          f"tf.reduce_mean), not NumPy or .numpy() ({type(error).__name__})") from None


def _dice_slip(name, value, expected, prob, label):
    said = f"for {name} you gave {value:.3f}, expected {expected:.3f}"
    binary, axes = (prob > 0.5).astype(np.float32), (1, 2, 3)
    soft = 2 * np.sum(prob * label, axes) / (np.sum(prob**2 + label**2, axes) + 1e-3)
    pooled = 2 * np.sum(binary * label) / (np.sum(binary + label) + 1e-3)
    if not label.any() and not binary.any():
        return (f"{said}: add eps to the numerator too, (2 * overlap + eps) / (pixels in pred + "
                f"pixels in label + eps), so that two empty masks match (Dice 1, as labkit.metrics)")
    if abs(value - float(np.mean(soft))) < 1e-3:
        return f"{said} (the soft Dice): binarise the prediction at 0.5 first"
    if abs(value - pooled) < 1e-3 and len(prob) > 1:
        return f"{said}: compute Dice per image (sum over height, width, channels), then average over the batch"
    return f"{said} (2 * overlap / (pixels in pred + pixels in label))"


# ---- Exercise 2: one ConvLSTM step -------------------------------------------------------------
def _step_case(seed: int = 7):
    """Inputs, a SIGNED cell state (so a missing ReLU on the cell shows), hidden, kernel, bias."""
    rng = np.random.default_rng(seed)
    channels_in, filters = 3, 4
    inputs = rng.normal(size=(2, 6, 5, channels_in)).astype(np.float32)
    cell = rng.normal(scale=1.5, size=(2, 6, 5, filters)).astype(np.float32)
    hidden = np.abs(rng.normal(size=(2, 6, 5, filters))).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, channels_in + filters, 4 * filters)).astype(np.float32)
    return inputs, cell, hidden, kernel, rng.normal(scale=0.2, size=(4 * filters,)).astype(np.float32)


def _fused_step(x, cell, hidden, kernel, bias, forget_bias, update=tf.nn.relu, output=tf.nn.relu,
                hidden_first=False, order="igfo", old_cell=False):
    """The fused formulation with switches for the usual slips: ``(h_t, c_t)`` as NumPy."""
    both = tf.concat([hidden, x] if hidden_first else [x, hidden], axis=-1)
    gates = dict(zip(order, tf.split(tf.nn.conv2d(both, kernel, 1, "SAME") + bias, 4, axis=-1), strict=True))
    new_cell = tf.sigmoid(gates["f"] + forget_bias) * cell + tf.sigmoid(gates["i"]) * update(gates["g"])
    return (tf.sigmoid(gates["o"]) * output(cell if old_cell else new_cell)).numpy(), new_cell.numpy()


STEP_SLIPS = {  # message -> the slip, as switches of _fused_step
    "the forget bias is missing: f + forget_bias goes into the sigmoid": dict(forget_bias=0.0),
    "you add 1.0 to f whatever forget_bias says: use the forget_bias argument": dict(forget_bias=1.0),
    "tanh where CFCM uses ReLU (the update g and the new hidden state)": dict(update=tf.tanh, output=tf.tanh),
    "the update g has no ReLU: c_t = sigmoid(f + forget_bias) * c_{t-1} + sigmoid(i) * relu(g)":
        dict(update=tf.identity),
    "the new hidden state has no ReLU on the cell: h_t = sigmoid(o) * relu(c_t)": dict(output=tf.identity),
    "h_t uses the old cell state: h_t = sigmoid(o) * relu(c_t) with the NEW c_t": dict(old_cell=True),
    "the concatenation is reversed: the kernel reads concat([inputs, hidden]), inputs first":
        dict(hidden_first=True),
    "you split the 4C channels as i, f, g, o; they are ordered i, g, f, o": dict(order="ifgo"),
    "you split the 4C channels as g, i, f, o; they are ordered i, g, f, o": dict(order="gifo"),
    "you split the 4C channels as i, g, o, f; they are ordered i, g, f, o": dict(order="igof"),
}


def check_convlstm_step(convlstm_step):
    """Compare ``convlstm_step`` with ``keras.layers.ConvLSTM2D``, for two forget biases."""
    _callable(convlstm_step, "convlstm_step")
    inputs, cell, hidden, kernel, bias = _step_case()
    filters = cell.shape[-1]
    for forget_bias in (1.0, 0.5):
        options = {} if forget_bias == 1.0 else {"forget_bias": forget_bias}
        result = convlstm_step(tf.constant(inputs), tf.constant(np.concatenate([cell, hidden], -1)),
                               tf.constant(kernel), tf.constant(bias), **options)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise CheckFailed("return two things, `new_hidden, new_state`, with new_state = concat([new_cell, new_hidden])")
        new_hidden, state = _as_array(result[0], "new_hidden"), _as_array(result[1], "new_state")
        if new_hidden.shape != hidden.shape or state.shape != (*hidden.shape[:3], 2 * filters):
            raise CheckFailed(f"new_hidden has shape {new_hidden.shape} and new_state {state.shape}; expected "
                              f"{hidden.shape} and {(*hidden.shape[:3], 2 * filters)} (C = {filters})")
        _, peer_hidden, peer_cell = keras_convlstm_steps(inputs[:, None], cell, hidden, kernel, bias, forget_bias)
        new_cell, state_hidden = state[..., :filters], state[..., filters:]
        if _close(new_hidden, peer_hidden) and _close(new_cell, peer_cell):
            if not _close(state_hidden, new_hidden):
                raise CheckFailed("new_hidden is right but the second half of new_state is not new_hidden")
            continue
        if _close(new_hidden, peer_hidden) and _close(new_cell, peer_hidden) and _close(state_hidden, peer_cell):
            raise CheckFailed("new_state is concat([new_hidden, new_cell]); the cell comes first")
        for message, switches in STEP_SLIPS.items():
            slip = _fused_step(inputs, cell, hidden, kernel, bias, **(dict(forget_bias=forget_bias) | switches))
            if all(map(_close, (new_hidden, new_cell), slip)):
                raise CheckFailed(message)
        if all(map(_close, (new_hidden, new_cell), _fused_step(inputs, hidden, cell, kernel, bias, forget_bias))):
            raise CheckFailed("cell and hidden are swapped when you split the state: it is concat([cell, hidden])")
        raise CheckFailed(f"with forget_bias={forget_bias} new_hidden differs from keras.layers.ConvLSTM2D by up "
                          f"to {np.max(np.abs(new_hidden - peer_hidden)):.3g}; compare your lines with the "
                          "equations above")
    return "matches keras.layers.ConvLSTM2D (mapped weights) for forget_bias 1.0 and 0.5, signed cell state"


# ---- Exercise 3: carrying the state to the finer stage -----------------------------------------
def check_carry_state(carry_state):
    """Compare ``carry_state(state, kernel, bias) -> (cell, hidden)`` with the pixel-by-pixel peer."""
    _callable(carry_state, "carry_state")
    rng = np.random.default_rng(11)
    state = np.abs(rng.normal(size=(2, 3, 4, 12))).astype(np.float32)
    kernel = rng.normal(scale=0.5, size=(2, 2, 6, 12)).astype(np.float32)
    bias = rng.normal(scale=0.3, size=(6,)).astype(np.float32)
    result = carry_state(tf.constant(state), tf.constant(kernel), tf.constant(bias))
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed("return two tensors, `cell, hidden`, for the finer stage")
    cell, hidden = _as_array(result[0], "cell"), _as_array(result[1], "hidden")
    for what, value in (("cell", cell), ("hidden", hidden)):
        if value.shape != (2, 6, 8, 3):
            raise CheckFailed(f"{what} has shape {value.shape}, expected (2, 6, 8, 3): twice the height and "
                              "width, and half of the 6 output channels")
    got, linear = np.concatenate([cell, hidden], axis=-1), transposed_conv_by_hand(state, kernel, bias)
    peer = np.maximum(linear, 0.0)
    if _close(got, peer):
        return "matches a 2x2 stride-2 transposed convolution written pixel by pixel"
    if _close(got, np.concatenate([peer[..., 3:], peer[..., :3]], axis=-1)):
        raise CheckFailed("cell and hidden are swapped: the first half of the channels is the cell")
    if _close(got, linear):
        raise CheckFailed("the ReLU after the transposed convolution is missing")
    if _close(got, np.maximum(transposed_conv_by_hand(state, kernel, 0 * bias), 0.0)):
        raise CheckFailed("the bias is missing")
    raise CheckFailed(f"differs from the pixel-by-pixel transposed convolution by up to {np.max(np.abs(got - peer)):.3g};"
                      " use tf.nn.conv2d_transpose with strides=2 and output_shape (batch, 2H, 2W, kernel.shape[2])")


# ---- Exercise 4: the coarse-to-fine decoder -----------------------------------------------------
def reference_decoder(net, image, *, reverse=False, carry=True, start_from_features=False,
                      last_block_only=False, trace=None):
    """CFCM's decoder computed from ``net``'s weights in the textbook form (keyword switches:
    the usual slips). Appends ``{stage, step, steps, hidden, forget}`` to ``trace`` when given.

    Returns:
        The final hidden state, the input of ``net.head``, as NumPy.
    """
    rungs = [[np.asarray(features, np.float32) for features in stage] for stage in net.encoder(image, training=False)]
    cell = hidden = None
    for stage in reversed(range(len(rungs))):
        if cell is None or not carry:
            start = rungs[stage][-1] if start_from_features and cell is None else np.zeros_like(rungs[stage][0])
            cell, hidden = start, start
        else:
            kernel, bias = net.carries[stage].get_weights()[:2]
            up = np.maximum(transposed_conv_by_hand(np.concatenate([cell, hidden], -1), kernel, bias), 0.0)
            cell, hidden = np.split(up, 2, axis=-1)
        memory = net.memories[stage]
        weights = keras_weights_from_fused(*memory.gates.get_weights(), rungs[stage][0].shape[-1], memory.forget_bias)
        blocks = rungs[stage][::-1] if reverse else rungs[stage]
        blocks = blocks[-1:] if last_block_only else blocks
        for step, features in enumerate(blocks):
            hidden, cell, forget = reference_step(features, hidden, cell, weights)
            if trace is not None:
                trace.append({"stage": stage + 1, "step": step + 1, "steps": len(blocks),
                              "hidden": hidden, "forget": forget})
    return hidden


def memory_trace(net, image) -> list[dict]:
    """The hidden state and forget gate after every step of ``net``'s memories (coarse to fine)
    for one ``image`` (H, W): dicts ``{stage, step, steps, hidden, forget}``, maps (h, w, C)."""
    trace = []
    reference_decoder(net, np.asarray(image, np.float32)[None, ..., None], trace=trace)
    return [dict(entry, hidden=entry["hidden"][0], forget=entry["forget"][0]) for entry in trace]


DECODER_SLIPS = {  # message -> switches of reference_decoder
    "you feed each stage's blocks last first (the old course's order); feed them as the encoder made "
    "them, first block first, as the authors' code does": dict(reverse=True),
    "every stage starts from zeros: only the deepest stage does; the finer ones start from the state "
    "the coarser stage hands over through self.carries[stage]": dict(carry=False),
    "the memory must start empty: the first state is zeros (cell and hidden), not the features":
        dict(start_from_features=True),
    "you feed only the last block of each stage; the memory reads every block of the stage, one per step":
        dict(last_block_only=True),
}


def check_decoder(model_class):
    """Build a small ``model_class(2, layers=(2, 3, 2, 2))``, record what its ``call`` hands to
    ``self.head`` and compare it with :func:`reference_decoder` on the same weights."""
    _callable(model_class, "CFCM34")
    image = tf.constant(np.random.default_rng(5).uniform(size=(2, 32, 32, 1)), tf.float32)
    with _float32_policy():
        keras.utils.set_random_seed(5)
        net = model_class(2, layers=(2, 3, 2, 2))
        head, seen = net.head, []

        def spy(features):
            seen.append(np.asarray(features, np.float32))
            return head(features)

        object.__setattr__(net, "head", spy)  # not a tracked layer: the model stays as it was built
        try:
            net(image, training=False)
        except (ValueError, tf.errors.InvalidArgumentError):
            raise CheckFailed("call() stopped on a shape mismatch: go from the deepest stage (len(rungs) - 1) "
                              "to stage 0 and carry the state with self.carries[stage] before each finer "
                              "stage") from None
        finally:
            object.__setattr__(net, "head", head)
        for stage, carry in enumerate(net.carries):  # a decoder that never carries left them unbuilt
            if not carry.weights:
                carry(tf.zeros((1, 2, 2, 2 * net.memories[stage + 1].filters)))
        _check_parts(net)
        expected = reference_decoder(net, image)
    got = seen[-1] if seen else None
    if got is None or got.shape != expected.shape:
        raise CheckFailed(f"self.head must read the last hidden state, shape {expected.shape} here (C channels); "
                          f"it got {None if got is None else got.shape}")
    if _near(got, expected):
        return "matches the reference decoder (textbook ConvLSTM form) on the same weights"
    for message, switches in DECODER_SLIPS.items():
        if _near(got, reference_decoder(net, image, **switches)):
            raise CheckFailed(message)
    raise CheckFailed(f"the last hidden state differs from the reference decoder's by up to {np.max(np.abs(got - expected)):.3g}:"
                      " zero state, stages coarse to fine, carry between them, every block in order")


def _near(got, expected) -> bool:
    return got.shape == expected.shape and float(np.max(np.abs(got - expected))) <= TOLERANCE * max(
        1.0, float(np.max(np.abs(expected))))


def _check_parts(net):
    """The model runs the student's step and carry: say so when those are not right yet."""
    rng = np.random.default_rng(2)
    memory, carry = net.memories[0], net.carries[0]
    channels = memory.filters
    x, cell, hidden = (rng.uniform(size=(1, 4, 4, channels)).astype(np.float32) for _ in range(3))
    got_hidden, _ = memory(tf.constant(x), tf.constant(np.concatenate([cell, hidden], -1)))
    weights = keras_weights_from_fused(*memory.gates.get_weights(), channels, memory.forget_bias)
    if not _close(np.asarray(got_hidden), reference_step(x, hidden, cell, weights)[0]):
        raise CheckFailed("the model's memory cell runs your convlstm_step, which is not right yet: "
                          "run ex.convlstm_step.check(convlstm_step) first")
    state = rng.uniform(size=(1, 2, 2, 4 * channels)).astype(np.float32)
    kernel, bias = carry.get_weights()[:2]
    if not _close(np.asarray(carry(tf.constant(state))), np.maximum(transposed_conv_by_hand(state, kernel, bias), 0.0)):
        raise CheckFailed("the model's carry runs your carry_state, which is not right yet: "
                          "run ex.carry_state.check(carry_state) first")


# ---- the exercises -------------------------------------------------------------------------
dice_score = Exercise(1, "the binarised Dice score", check_dice_score, hints=[
    "Threshold the probabilities first: a pixel is lung when prob > 0.5; tf.cast it to float32.",
    "Per image: (2 * sum(pred * label) + eps) / (sum(pred) + sum(label) + eps), summing over axes 1, 2, 3; "
    "eps in both places makes two empty masks a perfect match (Dice 1), as labkit.metrics says.",
    "Only TensorFlow operations (tf.reduce_sum, tf.reduce_mean): the training step runs your function "
    "inside tf.function, where NumPy cannot see the numbers. Return tf.reduce_mean of the per-image Dice.",
], lab="cfcm")

convlstm_step = Exercise(2, "one ConvLSTM step", check_convlstm_step, hints=[
    "cell, hidden = tf.split(state, 2, axis=-1) (cell first); convolve concat([inputs, hidden]) once to 4C "
    "channels and split that into i, g, f, o.",
    "tf.nn.conv2d(x, kernel, strides=1, padding='SAME') + bias; tf.split(features, 4, axis=-1). Use the "
    "forget_bias argument: the check calls your function with 1.0 and with 0.5.",
    "c_t = sigmoid(f + forget_bias) * c_{t-1} + sigmoid(i) * relu(g); h_t = sigmoid(o) * relu(c_t); "
    "return h_t, concat([c_t, h_t], -1). The ReLU on c_t matters for any cell state that can be negative.",
], lab="cfcm")

carry_state = Exercise(3, "carry the state to the finer stage", check_carry_state, hints=[
    "The state (cell and hidden, 2C channels) goes through ONE transposed convolution, kernel 2, stride 2, "
    "to 2C' channels, then a ReLU; split the result into the finer cell and hidden (cell first).",
    "tf.nn.conv2d_transpose needs output_shape: (batch, 2 * height, 2 * width, kernel.shape[2]); take batch, "
    "height and width from tf.shape(state).",
    "up = tf.nn.relu(tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2) + bias); "
    "cell, hidden = tf.split(up, 2, axis=-1).",
], lab="cfcm")

decoder = Exercise(4, "the coarse-to-fine decoder", check_decoder, hints=[
    "Start from zeros: state = concatenate([zeros_like(deepest), zeros_like(deepest)]) with deepest = "
    "rungs[-1][-1] (C channels each for cell and hidden).",
    "for stage in reversed(range(len(rungs))): carry the state first (state = self.carries[stage](state)) "
    "unless it is the deepest stage, then feed every block of rungs[stage], first to last.",
    "hidden, state = self.memories[stage](features, state) for each block; after the loop, `hidden` is what "
    "self.head reads.",
], lab="cfcm")

__all__ = ["carry_state", "convlstm_step", "decoder", "dice_score", "keras_convlstm_steps",
           "keras_weights_from_fused", "memory_trace", "reference_decoder", "reference_step",
           "transposed_conv_by_hand"]
