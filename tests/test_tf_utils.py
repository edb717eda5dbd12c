"""labkit.tf_utils: seeding, precision policy, atomic checkpoints and resume."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from labkit import tf_utils  # noqa: E402

pytestmark = pytest.mark.tf


def tiny_net(units=3):
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units), keras.layers.Dense(1)])
    return net


def train_once(net, optimizer):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(net(tf.ones((2, 4))) ** 2)
    gradients = tape.gradient(loss, net.trainable_variables)
    optimizer.apply(gradients, net.trainable_variables)


def test_configure_seeds_and_reports_cpu_setup():
    setup = tf_utils.configure(seed=5, mixed_precision=True, xla=True)
    first = tf.random.uniform((3,)).numpy()
    tf_utils.configure(seed=5)
    second = tf.random.uniform((3,)).numpy()
    np.testing.assert_array_equal(first, second)
    if not tf.config.list_physical_devices("GPU"):
        assert setup.device == "CPU" and not setup.mixed_precision and not setup.xla
        assert keras.mixed_precision.global_policy().name == "float32"
        assert "mixed precision off" in str(setup)


def test_checkpoint_round_trip_restores_weights_optimizer_and_epoch(tmp_path):
    tf_utils.configure(seed=1)
    net, optimizer = tiny_net(), keras.optimizers.Adam(1e-2)
    train_once(net, optimizer)
    epoch = tf.Variable(3, dtype=tf.int64)
    path = tf_utils.save_checkpoint(tmp_path, net=net, optimizer=optimizer, epoch=epoch)
    assert path.name == "ckpt-1"
    assert tf_utils.latest_checkpoint(tmp_path) == path

    fresh, fresh_optimizer = tiny_net(), keras.optimizers.Adam(1e-2)
    fresh_optimizer.build(fresh.trainable_variables)
    fresh_epoch = tf.Variable(0, dtype=tf.int64)
    restored = tf_utils.restore_checkpoint(tmp_path, net=fresh, optimizer=fresh_optimizer, epoch=fresh_epoch)
    assert restored == path
    assert int(fresh_epoch.numpy()) == 3
    assert int(fresh_optimizer.iterations.numpy()) == 1
    for mine, theirs in zip(net.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


class NestedNet(keras.Model):
    """Layers kept in a list of lists, as the lab's encoder keeps its stages of blocks."""

    def __init__(self):
        super().__init__()
        self.stages = [[keras.layers.Dense(3), keras.layers.BatchNormalization()]]
        self.head = keras.layers.Dense(1)

    def call(self, inputs, training=False):
        dense, norm = self.stages[0]
        return self.head(norm(dense(inputs), training=training))


def normalised_net():
    net = NestedNet()
    net(tf.zeros((1, 4)))
    return net


def test_checkpoint_restores_batchnorm_statistics_and_optimizer_moments(tmp_path):
    tf_utils.configure(seed=2)
    net, optimizer = normalised_net(), keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(net(tf.random.uniform((8, 4), seed=1), training=True) ** 2)
    optimizer.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
    tf_utils.save_checkpoint(tmp_path, net=net, optimizer=optimizer)

    fresh, fresh_optimizer = normalised_net(), keras.optimizers.Adam(1e-2)
    fresh_optimizer.build(fresh.trainable_variables)
    tf_utils.restore_checkpoint(tmp_path, net=fresh, optimizer=fresh_optimizer)
    assert not np.allclose(net.stages[0][1].moving_mean.numpy(), 0.0)
    for mine, theirs in zip(net.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    for mine, theirs in zip(optimizer.variables, fresh_optimizer.variables, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)


def test_checkpoints_are_numbered_and_pruned(tmp_path):
    net = tiny_net()
    for _ in range(3):
        latest = tf_utils.save_checkpoint(tmp_path, max_to_keep=2, net=net)
    assert latest.name == "ckpt-3"
    kept = sorted(path.name for path in (tmp_path / "checkpoints").glob("ckpt-*.index"))
    assert kept == ["ckpt-2.index", "ckpt-3.index"]
    assert tf_utils.save_checkpoint(tmp_path, number=10, net=net).name == "ckpt-10"


def test_restore_without_checkpoint_is_a_fresh_run(tmp_path):
    assert tf_utils.restore_checkpoint(tmp_path, net=tiny_net()) is None


def test_restore_into_another_model_says_what_to_do(tmp_path):
    tf_utils.save_checkpoint(tmp_path, net=tiny_net(units=3))
    with pytest.raises(tf_utils.CheckpointError, match="choose another RUN_NAME"):
        tf_utils.restore_checkpoint(tmp_path, net=tiny_net(units=5))


def test_save_without_objects_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to checkpoint"):
        tf_utils.save_checkpoint(tmp_path)


def test_count_parameters():
    assert tf_utils.count_parameters(tiny_net(units=3)) == 4 * 3 + 3 + 3 + 1


def test_the_run_checkpoint_keeps_the_last_and_the_best_epoch(tmp_path):
    net = tiny_net(units=3)
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(net.trainable_variables)
    checkpoint = tf_utils.Checkpoint(net, optimizer)
    assert checkpoint.restore(tmp_path) is None and checkpoint.load_best(tmp_path) is False
    best = [weight.copy() for weight in net.get_weights()]
    checkpoint.save(tmp_path, 1, best=True)
    net.set_weights([weight + 1 for weight in best])
    checkpoint.save(tmp_path, 2, best=False)
    last = [weight.copy() for weight in net.get_weights()]

    again = tf_utils.Checkpoint(net, optimizer)
    net.set_weights([weight * 0 for weight in best])
    assert again.restore(tmp_path) == 2
    for weight, expected in zip(net.get_weights(), last, strict=True):
        np.testing.assert_array_equal(weight, expected)
    assert again.load_best(tmp_path) is True
    for weight, expected in zip(net.get_weights(), best, strict=True):
        np.testing.assert_array_equal(weight, expected)
    again.clear(tmp_path)
    assert again.restore(tmp_path) is None and not (tmp_path / "best.weights.h5").exists()


def test_a_worker_that_is_not_the_chief_saves_into_a_folder_it_then_deletes(tmp_path):
    net = tiny_net(units=2)
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(net.trainable_variables)
    tf_utils.Checkpoint(net, optimizer).save(None, 1, best=True)
    assert tf_utils.latest_checkpoint(tmp_path) is None
