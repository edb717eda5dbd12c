"""Lab 2: the hand-written ConvLSTM cell vs ``keras.layers.ConvLSTM2D``; CFCM34 vs the ladder.

TensorFlow only (``run_all.py`` starts this script in its own process, never with PyTorch).

1. ConvLSTM at the stage-1 sizes (the cpu profile's, and the seed's with the batch scaled
   down): the lab's cell (the student's ``convlstm_step``: one convolution of
   ``concat(input, hidden)`` to 4C channels, split into i, g, f, o) unrolled over the stage's
   blocks, against Keras' ConvLSTM2D with the same weights mapped
   (input and recurrent kernels, gates i, f, c, o, forget bias folded in). Both compiled with
   ``tf.function``; equality of the final hidden and cell states and of the input gradients;
   time per forward + backward. Both start from the same (B, T, H, W, C) sequence: Keras reads
   it whole, the hand-written cell unstacks it once into the T per-step inputs CFCM gives it.
2. Whole networks at the cpu profile's size: CFCM34 vs the plain ResNet34 ladder with summed
   or concatenated skips: seconds per training step (the lab's ``make_steps``), parameters.

    .venv/bin/python benchmarks/bench_cfcm.py --result /tmp/cfcm.json --config '{"repeats": 3}'
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from common import compare, log, ratio, section_main, speed_target  # noqa: E402

STAGE_ONE_BLOCKS = 3  # ResNet34's first stage: three blocks, so three ConvLSTM steps


def run(config: dict) -> dict:
    import keras

    from labkit.profiles import get_profile

    quick = bool(config.get("quick"))
    repeats = int(config.get("repeats", 3))
    keras.utils.set_random_seed(0)
    from labkit.labs import cfcm as namespace

    source = "labkit/labs/cfcm.py"
    cpu = get_profile("cpu").cfcm
    gpu = get_profile("gpu").cfcm
    if quick:
        cell_cases = [{"name": "quick", "batch": 2, "side": 16, "channels": 4}]
        network_case = {"batch": 2, "side": 32, "base_filters": 4, "layers": (1, 1, 1, 1)}
    else:
        cell_cases = [
            {"name": "cpu profile", "batch": cpu.batch_size, "side": cpu.image_size[0] // 2,
             "channels": cpu.base_filters},
            {"name": "seed (batch scaled to 2)", "batch": 2, "side": gpu.image_size[0] // 2,
             "channels": gpu.base_filters},
        ]
        network_case = {"batch": cpu.batch_size, "side": cpu.image_size[0],
                        "base_filters": cpu.base_filters, "layers": (3, 4, 6, 3)}
    result = {"lab_source": source, "convlstm": [], "targets": []}
    for case in cell_cases:
        log(f"cfcm: ConvLSTM {case}")
        measured = convlstm_comparison(namespace, case, repeats)
        result["convlstm"].append(measured)
        timings = measured["timings"]
        target = speed_target(f"hand-written ConvLSTM vs Keras ConvLSTM2D, fwd+bwd ({case['name']})",
                              timings["keras_convlstm2d"], timings["hand_written_cell"], 1.0,
                              extra_ok=measured["equal"])
        result["targets"].append(dict(target, target=">= 1x (no slower), equal outputs"))
    log(f"cfcm: networks {network_case}")
    result["networks"] = network_comparison(namespace, network_case, repeats)
    return result


# ----------------------------------------------------------------------------------------------
# ConvLSTM cell
# ----------------------------------------------------------------------------------------------


def convlstm_comparison(namespace, case: dict, repeats: int) -> dict:
    """Equality and forward + backward time of the lab's cell vs ConvLSTM2D, one stage."""
    import keras
    import tensorflow as tf

    from labkit.exercises.cfcm import keras_weights_from_fused

    batch, side, channels = case["batch"], case["side"], case["channels"]
    rng = np.random.default_rng(0)
    sequence = tf.constant(rng.standard_normal((batch, STAGE_ONE_BLOCKS, side, side, channels)),
                           tf.float32)
    state = tf.constant(0.5 * rng.standard_normal((batch, side, side, 2 * channels)), tf.float32)
    cell = namespace.ConvLSTMCell(channels)
    cell(sequence[:, 0], state)  # build
    kernel, bias = (np.asarray(w) for w in cell.gates.weights)
    peer = keras.layers.ConvLSTM2D(channels, kernel.shape[0], padding="same", activation="relu",
                                   recurrent_activation="sigmoid", return_state=True)
    peer.build(sequence.shape)
    peer.set_weights(keras_weights_from_fused(kernel, bias, channels, float(cell.forget_bias)))

    @tf.function
    def ours(inputs, start):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            current = start
            # One unstack, as CFCM hands the cell one block output at a time. Slicing
            # inputs[:, step] per step would add a full-size StridedSliceGrad per step to the
            # backward pass (it made the cell look 15-30 % slower than it is).
            for features in tf.unstack(inputs, axis=1):
                _, current = cell(features, current)
            loss = tf.reduce_sum(current)
        return current, tape.gradient(loss, [inputs, *cell.trainable_variables])

    @tf.function
    def theirs(inputs, start):
        memory, hidden = tf.split(start, 2, axis=-1)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            _, last_hidden, last_cell = peer(inputs, initial_state=[hidden, memory])
            current = tf.concat([last_cell, last_hidden], axis=-1)
            loss = tf.reduce_sum(current)
        return current, tape.gradient(loss, [inputs, *peer.trainable_variables])

    state_ours, gradients_ours = ours(sequence, state)
    state_theirs, gradients_theirs = theirs(sequence, state)
    state_error = _relative_error(state_ours, state_theirs)
    gradient_error = _relative_error(gradients_ours[0], gradients_theirs[0])
    timings = compare({"hand_written_cell": lambda: _sync(ours(sequence, state)),
                       "keras_convlstm2d": lambda: _sync(theirs(sequence, state))},
                      repeats=max(repeats, 11), warmup=1)
    return {
        "name": case["name"], "batch": batch, "height": side, "width": side,
        "channels": channels, "steps": STAGE_ONE_BLOCKS,
        "state_relative_error": state_error, "input_gradient_relative_error": gradient_error,
        "equal": bool(state_error < 1e-4 and gradient_error < 1e-4),
        "parameters": {"hand_written_cell": int(kernel.size + bias.size),
                       "keras_convlstm2d": int(sum(np.prod(w.shape) for w in peer.weights))},
        # one kernel over concat(input, hidden), applied per gate; Keras: 4 input + 4 recurrent
        "convolutions_per_step": {"hand_written_cell": 4, "keras_convlstm2d": 8},
        "timings": timings,
        "speedup_vs_keras": ratio(timings["keras_convlstm2d"], timings["hand_written_cell"]),
    }


def _sync(result) -> None:
    """Pull one value back so the measured call has really finished."""
    state, _ = result
    float(state[0, 0, 0, 0])


def _relative_error(first, second) -> float:
    first, second = np.asarray(first), np.asarray(second)
    return float(np.abs(first - second).max() / max(np.abs(second).max(), 1e-12))


# ----------------------------------------------------------------------------------------------
# Whole networks
# ----------------------------------------------------------------------------------------------


def network_comparison(namespace, case: dict, repeats: int) -> dict:
    """Training-step time and parameters of CFCM34 and the ladder (sum / concat)."""
    import keras
    import tensorflow as tf

    batch, side, base, layers = case["batch"], case["side"], case["base_filters"], case["layers"]
    rng = np.random.default_rng(1)
    image = tf.constant(rng.random((batch, side, side, 1)), tf.float32)
    label = tf.constant((rng.random((batch, side, side, 1)) > 0.6), tf.float32)
    nets = {"cfcm34": namespace.CFCM34(base_filters=base, layers=layers),
            "ladder_sum": namespace.LadderNet(base_filters=base, layers=layers, fusion="sum"),
            "ladder_concat": namespace.LadderNet(base_filters=base, layers=layers, fusion="concat")}
    steps, parameters = {}, {}
    for name, net in nets.items():
        net(image[:1])  # build
        parameters[name] = int(sum(np.prod(w.shape) for w in net.trainable_weights))
        train_step, _ = namespace.make_steps(net, keras.optimizers.Adam(1e-3))
        steps[name] = (lambda step=train_step: float(step(image, label)[0]))
    timings = compare(steps, repeats=repeats, warmup=1)
    return {
        "batch": batch, "height": side, "width": side, "base_filters": base, "layers": list(layers),
        "networks": {name: dict(timings[name], parameters=parameters[name],
                                samples_per_s=round(batch / timings[name]["median_s"], 3))
                     for name in nets},
        "cfcm34_time_vs": {name: round(timings["cfcm34"]["median_s"] / timings[name]["median_s"], 2)
                           for name in nets if name != "cfcm34"},
    }


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
