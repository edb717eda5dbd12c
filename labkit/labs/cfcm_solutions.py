# generated from notebooks/02_cfcm_lung.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: W291, W293
"""The exercise solutions of notebooks/02_cfcm_lung.ipynb, shown by ``ex.<name>.solution()``.

``SOLUTIONS[number] = (title, source)``, numbered as in the student notebooks.
"""

SOLUTIONS = {}


SOLUTIONS[1] = 'the binarised Dice score', '''\
def dice_score(prob, label, eps=1e-3):
    """Binarised Dice: threshold ``prob`` at 0.5, Dice per image, mean over the batch."""
    pred = tf.cast(prob > 0.5, tf.float32)
    overlap = tf.reduce_sum(pred * label, axis=[1, 2, 3])
    total = tf.reduce_sum(pred + label, axis=[1, 2, 3])
    return tf.reduce_mean((2.0 * overlap + eps) / (total + eps))
'''

SOLUTIONS[2] = 'one ConvLSTM step', '''\
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
'''

SOLUTIONS[3] = 'carry the state to the finer stage', '''\
def carry_state(state, kernel, bias):
    """Coarse state (B, h, w, 2C) -> finer (cell, hidden), each (B, 2h, 2w, C')."""
    shape = tf.shape(state)
    output_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], tf.shape(kernel)[2]])
    up = tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2, padding="SAME") + bias
    cell, hidden = tf.split(tf.nn.relu(up), 2, axis=-1)
    return cell, hidden
'''

SOLUTIONS[4] = 'the coarse-to-fine decoder', '''\
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
'''
