# generated from notebooks/02_cfcm_lung.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: E402, I001
"""Lab code from notebooks/02_cfcm_lung.ipynb: its cells tagged ``export``.

Importable outside the notebook (tests, benchmarks, ``labkit.train``); regenerate with
``make export``.
"""


from labkit.data.transforms import RandomAffine, RandomIntensity
import tensorflow as tf
import keras
import numpy as np
from labkit.runs import check_loss
from labkit.viz import progress


augmentation = [
    RandomAffine(["image", "label"], orders=(1, 0), degrees=5.0, scale=(0.95, 1.05), spatial_dims=2),
    RandomIntensity(["image"], scale=(0.9, 1.1), shift=(-0.05, 0.05)),
]


EPSILON = 1e-3


def dice_loss(prob, label):
    """1 - soft Dice per image, averaged over the batch; ``prob`` and ``label`` are (B, H, W, 1).

    ``EPSILON`` in numerator and denominator: an image without lung predicted empty has loss 0.
    """
    prob = tf.cast(prob, tf.float32)
    overlap = tf.reduce_sum(prob * label, axis=[1, 2, 3])
    total = tf.reduce_sum(prob**2 + label**2, axis=[1, 2, 3])
    return tf.reduce_mean(1.0 - (2.0 * overlap + EPSILON) / (total + EPSILON))


def dice_score(prob, label, eps=1e-3):
    """Binarised Dice: threshold ``prob`` at 0.5, Dice per image, mean over the batch."""
    pred = tf.cast(prob > 0.5, tf.float32)
    overlap = tf.reduce_sum(pred * label, axis=[1, 2, 3])
    total = tf.reduce_sum(pred + label, axis=[1, 2, 3])
    return tf.reduce_mean((2.0 * overlap + eps) / (total + eps))


def convlstm_step(inputs, state, kernel, bias, forget_bias=1.0):
    """One ConvLSTM step, CFCM's flavour (ReLU for the update and the output).

    Args:
        inputs: x_t, (B, H, W, C_in).
        state: concat([c_{t-1}, h_{t-1}]), (B, H, W, 2C): the cell first.
        kernel: (k, k, C_in + C, 4C), reads concat([inputs, hidden]); output channels i, g, f, o.
        bias: (4C,).
        forget_bias: added to f before its sigmoid.

    Returns:
        ``new_hidden, new_state``: h_t (B, H, W, C) and concat([c_t, h_t]) (B, H, W, 2C).
    """
    cell, hidden = tf.split(state, 2, axis=-1)
    features = tf.nn.conv2d(tf.concat([inputs, hidden], axis=-1), kernel, strides=1, padding="SAME") + bias
    i, g, f, o = tf.split(features, 4, axis=-1)
    new_cell = tf.sigmoid(f + forget_bias) * cell + tf.sigmoid(i) * tf.nn.relu(g)
    new_hidden = tf.sigmoid(o) * tf.nn.relu(new_cell)
    return new_hidden, tf.concat([new_cell, new_hidden], axis=-1)


class ConvLSTMCell(keras.layers.Layer):
    """One convolutional LSTM step in CFCM's layout: ``call(inputs, state) -> (hidden, state)``.

    The state is ``concat([cell, hidden])`` (2C channels); the step is ``convlstm_step`` with
    this layer's kernel ``(k, k, C_in + C, 4C)`` and bias.

    Args:
        filters: C, the channels of the cell and of the hidden state.
        kernel_size: size of the gate convolution.
        forget_bias: added to the forget gate before its sigmoid, so the cell starts by remembering.

    Example:
        >>> cell = ConvLSTMCell(16)
        >>> hidden, state = cell(features, state)   # features (B, H, W, C_in), state (B, H, W, 32)
    """

    def __init__(self, filters, kernel_size=3, forget_bias=1.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.forget_bias = forget_bias
        self.gates = keras.layers.Conv2D(4 * filters, kernel_size, padding="same", name="gates",
                                         dtype=self.dtype_policy)

    def build(self, inputs_shape, state_shape):
        self.gates.build((*inputs_shape[:-1], inputs_shape[-1] + state_shape[-1] // 2))

    def call(self, inputs, state):
        kernel = keras.ops.cast(self.gates.kernel, self.compute_dtype)
        bias = keras.ops.cast(self.gates.bias, self.compute_dtype)
        return convlstm_step(inputs, state, kernel, bias, self.forget_bias)


class BasicBlock(keras.layers.Layer):
    """Pre-activation ResNet basic block: BN-ReLU, conv 3x3, BN-ReLU, conv 3x3, plus the shortcut.

    With ``project=True`` (the first block of a stage) the shortcut is a 1x1 convolution of the
    normalised input, so its channels match the block's.
    """

    def __init__(self, filters, project=False, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = keras.layers.BatchNormalization(momentum=0.9)
        self.conv1 = keras.layers.Conv2D(filters, 3, padding="same")
        self.norm2 = keras.layers.BatchNormalization(momentum=0.9)
        self.conv2 = keras.layers.Conv2D(filters, 3, padding="same")
        self.projection = keras.layers.Conv2D(filters, 1) if project else None

    def call(self, inputs, training=False):
        activated = keras.ops.relu(self.norm1(inputs, training=training))
        shortcut = inputs if self.projection is None else self.projection(activated)
        features = self.conv1(activated)
        features = self.conv2(keras.ops.relu(self.norm2(features, training=training)))
        return features + shortcut


class LadderEncoder(keras.layers.Layer):
    """ResNet34-style "ladder" encoder: stem (7x7 conv, 2x2 max-pool), then stages of basic blocks.

    Stage ``s`` (from 0) has ``base_filters * 2**s`` channels at ``1 / 2**(s + 1)`` of the input
    size. ``call`` returns every block's output, stage by stage: a list of ``len(layers)`` lists.
    """

    def __init__(self, base_filters, layers=(3, 4, 6, 3), **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Conv2D(base_filters, 7, padding="same")
        self.pool = keras.layers.MaxPooling2D(2)
        self.stages = [[BasicBlock(base_filters * 2**stage, project=(block == 0)) for block in range(count)]
                       for stage, count in enumerate(layers)]

    def call(self, image, training=False):
        features = self.pool(self.stem(image))
        rungs = []
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                features = self.pool(features)
            outputs = []
            for block in blocks:
                features = block(features, training=training)
                outputs.append(features)
            rungs.append(outputs)
        return rungs


def carry_state(state, kernel, bias):
    """Coarse state (B, h, w, 2C) -> finer (cell, hidden), each (B, 2h, 2w, C')."""
    shape = tf.shape(state)
    output_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], tf.shape(kernel)[2]])
    up = tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2, padding="SAME") + bias
    cell, hidden = tf.split(tf.nn.relu(up), 2, axis=-1)
    return cell, hidden


class StateCarry(keras.layers.Layer):
    """Hands a stage's final state to the next, finer stage: ``carry_state`` with this layer's
    2x2 stride-2 transposed-convolution weights; returns the finer ``concat([cell, hidden])``."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Conv2DTranspose(filters, 2, strides=2, name="up", dtype=self.dtype_policy)

    def build(self, state_shape):
        self.up.build(state_shape)

    def call(self, state):
        kernel = keras.ops.cast(self.up.kernel, self.compute_dtype)
        bias = keras.ops.cast(self.up.bias, self.compute_dtype)
        return keras.ops.concatenate(carry_state(state, kernel, bias), axis=-1)


class SegmentationHead(keras.layers.Layer):
    """Back to full size: 2x2 transposed conv (+ ReLU), conv 3x3 + ReLU, conv 3x3 to 1 channel, sigmoid."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Conv2DTranspose(filters, 2, strides=2, activation="relu")
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")
        self.logits = keras.layers.Conv2D(1, 3, padding="same")
        self.probability = keras.layers.Activation("sigmoid", dtype="float32")

    def call(self, features):
        return self.probability(self.logits(self.conv(self.up(features))))


class CFCM34(keras.Model):
    """CFCM: a ResNet34-style ladder encoder and one ConvLSTM memory per stage, read coarse to fine.

    Args:
        base_filters: kernels of the first stage (64 in the paper).
        layers: basic blocks per stage (ResNet34: 3, 4, 6, 3).
    """

    def __init__(self, base_filters=64, layers=(3, 4, 6, 3), **kwargs):
        super().__init__(**kwargs)
        channels = [base_filters * 2**stage for stage in range(len(layers))]
        self.encoder = LadderEncoder(base_filters, layers)
        self.memories = [ConvLSTMCell(c, name=f"memory_{s + 1}") for s, c in enumerate(channels)]
        # carries[s] takes the state of stage s + 1 (2 * channels[s + 1]) to stage s (2 * channels[s])
        self.carries = [StateCarry(2 * channels[s], name=f"carry_{s + 2}_to_{s + 1}") for s in range(len(layers) - 1)]
        self.head = SegmentationHead(base_filters)

    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)  # rungs[stage][block]: (B, h, w, C of the stage)
        deepest = rungs[-1][-1]
        state = keras.ops.concatenate([keras.ops.zeros_like(deepest), keras.ops.zeros_like(deepest)], axis=-1)
        for stage in reversed(range(len(rungs))):
            if stage < len(rungs) - 1:
                state = self.carries[stage](state)
            for features in rungs[stage]:
                hidden, state = self.memories[stage](features, state)
        return self.head(hidden)


class LadderNet(keras.Model):
    """The plain ResNet34-style ladder: the same encoder, skips fused by summation or concatenation.

    Coarse to fine, each stage fuses the upsampled decoder features with every block output of
    the stage (added, or concatenated), then a 3x3 convolution, batch normalisation and ReLU.
    """

    def __init__(self, base_filters=64, layers=(3, 4, 6, 3), fusion="sum", **kwargs):
        super().__init__(**kwargs)
        if fusion not in ("sum", "concat"):
            raise ValueError(f"fusion must be 'sum' or 'concat', not {fusion!r}")
        channels = [base_filters * 2**stage for stage in range(len(layers))]
        self.fusion = fusion
        self.encoder = LadderEncoder(base_filters, layers)
        self.mixers = [keras.layers.Conv2D(c, 3, padding="same") for c in channels]
        self.norms = [keras.layers.BatchNormalization(momentum=0.9) for _ in channels]
        self.ups = [keras.layers.Conv2DTranspose(channels[s - 1], 2, strides=2, activation="relu")
                    for s in range(1, len(layers))]
        self.head = SegmentationHead(base_filters)

    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        decoded = None
        for stage in reversed(range(len(rungs))):
            parts = list(rungs[stage]) if decoded is None else [self.ups[stage](decoded), *rungs[stage]]
            fused = keras.ops.concatenate(parts, axis=-1) if self.fusion == "concat" else sum(parts)
            decoded = keras.ops.relu(self.norms[stage](self.mixers[stage](fused), training=training))
        return self.head(decoded)


class ResidualLadderNet(keras.Model):
    """The authors' ResNet+Skip baseline (CFCM-2D ``seg_resnet_v2``): one residual block per rung.

    Coarse to fine, each block output of a stage, last block first, is concatenated to the
    running features and goes through a pre-activation basic block with a projection shortcut;
    between stages a 2x2 stride-2 transposed convolution (+ ReLU) halves the channels.
    """

    def __init__(self, base_filters=64, layers=(3, 4, 6, 3), **kwargs):
        super().__init__(**kwargs)
        channels = [base_filters * 2**stage for stage in range(len(layers))]
        self.encoder = LadderEncoder(base_filters, layers)
        self.rung_blocks = [[BasicBlock(c, project=True) for _ in range(count)] for c, count in zip(channels, layers, strict=True)]
        self.ups = [keras.layers.Conv2DTranspose(channels[s], 2, strides=2, activation="relu")
                    for s in range(len(layers) - 1)]
        self.head = SegmentationHead(base_filters)

    def call(self, image, training=False):
        rungs = self.encoder(image, training=training)
        features = None
        for stage in reversed(range(len(rungs))):
            if features is not None:
                features = self.ups[stage](features)
            for block, rung in zip(self.rung_blocks[stage], reversed(rungs[stage]), strict=True):
                features = rung if features is None else keras.ops.concatenate([features, rung], axis=-1)
                features = block(features, training=training)
        return self.head(features)


def make_steps(net, optimizer, xla=False):
    """The training and validation steps for ``net``, compiled by ``tf.function`` (XLA if asked)."""

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def train_step(image, label):
        with tf.GradientTape() as tape:
            prob = net(image, training=True)
            loss = dice_loss(prob, label)
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, net.trainable_variables)
        optimizer.apply(gradients, net.trainable_variables)
        return loss, dice_score(prob, label)

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def validation_step(image, label):
        prob = net(image, training=False)
        return dice_loss(prob, label), dice_score(prob, label), prob

    return train_step, validation_step


def as_tensors(batch):
    """A batch dict -> (image, label) tensors of shape (B, H, W, 1)."""
    return tf.constant(batch["image"][..., None]), tf.constant(batch["label"][..., None])


def train_one_epoch(train_step, batches):
    """One pass of ``train_step`` over ``batches``: the mean loss and Dice over the cases."""
    totals, count = np.zeros(2), 0
    for step, batch in enumerate(progress(batches, desc="train")):
        loss, score = train_step(*as_tensors(batch))
        loss = check_loss(loss, step)  # waits for the step; NaN / Inf stops before saving
        totals += len(batch["id"]) * np.array([loss, float(score)])
        count += len(batch["id"])
    return dict(zip(("loss", "dice"), totals / count, strict=True))


def evaluate(validation_step, batches):
    """Mean loss and binarised Dice over ``batches``; ``cases``: each case's Dice."""
    losses, cases = [], {}
    for batch in batches:
        image, label = as_tensors(batch)
        loss, _, prob = validation_step(image, label)
        losses += [float(loss)] * len(batch["id"])
        for index, case_id in enumerate(batch["id"]):
            cases[case_id] = float(dice_score(prob[index:index + 1], label[index:index + 1]))
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(list(cases.values()))), "cases": cases}
