#!/usr/bin/env python
"""Estimate the GPU memory one student needs per profile, from training steps run on the CPU.

Run where no GPU is at hand. Each lab's training step runs on the CPU in a fresh process, and the
framework's own accounting gives the memory the step needs on its device:

- Lab 1 (PyTorch): the tensors autograd saves for the backward pass (counted by storage, through
  ``saved_tensors_hooks``), plus the weights with their gradients and Adam's two moments, plus two
  of the largest saved tensors for the backward's temporaries.
- Lab 2 (TensorFlow): the peak of TensorFlow's own allocator during one training step (forward,
  Dice loss, backward, Adam), which it reports on the CPU too with ``TF_CPU_ALLOCATOR_USE_BFC``.

The ``gpu`` profile is too big for this machine (Lab 1: two 256x256x96 volumes), so it is measured
at two smaller sizes, batch 1, and extended along the straight line through them to the profile's
size and batch (activation memory grows with pixels or voxels times batch). Mixed precision is
measured as bfloat16 on the CPU, standing in for float16 on the GPU (both two bytes); XLA, which
the gpu profile uses in Lab 2 and which saves memory, is left out. Per student on a GPU this adds
what the CPU cannot show, as assumptions: the CUDA context with cuDNN's and cuBLAS's workspaces,
and the caching allocators' slack.

On a GPU, the labs record the true peak in ``metrics.json`` (``peak_gpu_memory_mb``): prefer that.

Usage:
    .venv/bin/python deploy/estimate_gpu_memory.py [--out estimate.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONTEXT_GB = 1.0  # assumed: the CUDA context and cuDNN/cuBLAS workspaces of one process
SLACK = 1.2  # assumed: the caching allocators' fragmentation and rounding
GPU_SIZES_GB = (16, 80)


def step_vnet(size, batch, base_filters, normalization, mixed) -> float:
    """MB Lab 1's training step needs (see the module's docstring)."""
    import torch

    from labkit.labs.vnet import VNet, dice_loss

    net = VNet(in_channels=2, out_channels=1, base_filters=base_filters, normalization=normalization)
    image, label = torch.randn(batch, 2, *size), (torch.rand(batch, 1, *size) > 0.7).float()
    saved = {}

    def keep(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            dice_loss(torch.sigmoid(net(image)).float(), label)
    weights = sum(parameter.numel() * 4 for parameter in net.parameters())
    return (sum(saved.values()) + 4 * weights + 2 * max(saved.values())) / 2**20


def step_cfcm(size, batch, base_filters, mixed) -> float:
    """MB Lab 2's training step needs: TensorFlow's allocator peak (see the module's docstring)."""
    import keras
    import tensorflow as tf

    from labkit.labs.cfcm import CFCM34, make_steps

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    net = CFCM34(base_filters)
    optimizer = keras.optimizers.Adam(1e-4)
    net(tf.zeros((1, *size, 1)))
    optimizer.build(net.trainable_variables)
    train_step = make_steps(net, optimizer)[0]
    image = tf.random.uniform((batch, *size, 1))
    label = tf.cast(tf.random.uniform((batch, *size, 1)) > 0.7, tf.float32)
    tf.config.experimental.reset_memory_stats("CPU:0")
    train_step(image, label)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20


def measure(lab: str, size, batch: int, profile: str) -> float:
    """MB one step of ``lab`` at ``size`` x ``batch`` takes, in a fresh process."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
            f"estimate_gpu_memory as e; from labkit.profiles import get_profile; "
            f"s = get_profile({profile!r}).{lab}; print(e.step_{lab}({tuple(size)!r}, {batch}, "
            f"s.base_filters, " + ("s.normalization, " if lab == "vnet" else "")
            + "s.mixed_precision))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "TF_CPU_ALLOCATOR_USE_BFC": "true", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"{lab} {size} x {batch}: {result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def estimate(lab: str, profile: str) -> dict:
    from labkit.profiles import get_profile

    settings = getattr(get_profile(profile), lab)
    size, batch = tuple(settings.image_size), settings.batch_size
    if profile != "gpu":
        step = measure(lab, size, batch, profile)
        how = f"measured at {'x'.join(map(str, size))}, batch {batch}"
    else:  # two smaller points on the line through (voxels x batch, MB)
        small = [tuple(-(-n // part // 16) * 16 for n in size) for part in (4, 2)]  # x16: V-Net
        points = [(_voxels(s), measure(lab, s, 1, profile)) for s in small]
        slope = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
        step = points[1][1] + slope * (_voxels(size) * batch - points[1][0])
        how = (f"measured at {' and '.join('x'.join(map(str, s)) for s in small)}, batch 1 "
               f"({', '.join(f'{mb:.0f} MB' for _, mb in points)}), extended to "
               f"{'x'.join(map(str, size))} x {batch}")
    per_student = CONTEXT_GB + SLACK * step / 1024
    return {"lab": lab, "profile": profile, "step_mb": round(step), "how": how,
            "per_student_gb": round(per_student, 1),
            **{f"students_per_{gb}gb": int(gb * 0.95 // per_student) for gb in GPU_SIZES_GB}}


def _voxels(size) -> int:
    total = 1
    for n in size:
        total *= n
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    parser.add_argument("--profiles", nargs="+", default=["smoke", "cpu", "gpu"])
    args = parser.parse_args(argv)
    rows = []
    print("| profile | lab | one training step | per student on a GPU | per 16 GB | per 80 GB |")
    print("|---|---|---|---|---|---|")
    for profile in args.profiles:
        for lab in ("vnet", "cfcm"):
            row = estimate(lab, profile)
            rows.append(row)
            print(f"| {profile} | {lab} | {row['step_mb']} MB ({row['how']}) | "
                  f"{row['per_student_gb']} GB | {row['students_per_16gb']} | "
                  f"{row['students_per_80gb']} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
