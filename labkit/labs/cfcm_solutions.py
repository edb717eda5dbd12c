# generated from notebooks/02_cfcm_lung.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: W291, W293
"""The exercise solutions of notebooks/02_cfcm_lung.ipynb, shown by ``ex.<name>.solution()``.

``SOLUTIONS[number] = (title, source)``, numbered as in the student notebooks.
"""

SOLUTIONS = {}


SOLUTIONS[1] = 'binarised Dice score', '''\
def dice_score(prob, label, eps=1e-3):
    """Binarised Dice: threshold ``prob`` at 0.5, Dice per image, mean over the batch."""
    pred = tf.cast(prob > 0.5, tf.float32)
    overlap = tf.reduce_sum(pred * label, axis=[1, 2, 3])
    total = tf.reduce_sum(pred + label, axis=[1, 2, 3])
    return tf.reduce_mean((2.0 * overlap + eps) / (total + eps))
'''

SOLUTIONS[2] = 'one ConvLSTM step', '''\
def convlstm_step(inputs, state, kernel, bias, forget_bias=1.0):
    """One ConvLSTM step (CFCM flavour: ReLU update); returns ``new_hidden, new_state``."""
    cell, hidden = tf.split(state, 2, axis=-1)
    features = tf.nn.conv2d(tf.concat([inputs, hidden], axis=-1), kernel, strides=1, padding="SAME") + bias
    i, j, f, o = tf.split(features, 4, axis=-1)
    new_cell = tf.sigmoid(f + forget_bias) * cell + tf.sigmoid(i) * tf.nn.relu(j)
    new_hidden = tf.sigmoid(o) * tf.nn.relu(new_cell)
    return new_hidden, tf.concat([new_cell, new_hidden], axis=-1)
'''

SOLUTIONS[3] = 'carry the state to the finer level', '''\
def carry_state(state, kernel, bias):
    """Coarse state (B, h, w, 2C) -> finer (cell, hidden), each (B, 2h, 2w, C')."""
    shape = tf.shape(state)
    output_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], tf.shape(kernel)[2]])
    up = tf.nn.conv2d_transpose(state, kernel, output_shape, strides=2, padding="SAME") + bias
    cell, hidden = tf.split(tf.nn.relu(up), 2, axis=-1)
    return cell, hidden
'''
