"""GPU: the lab's V-Net in fp32 vs mixed precision vs mixed precision + channels_last_3d.

Runs only where PyTorch sees a CUDA GPU; elsewhere the section says "not measured" and why.
The gpu profile's input (256x256x96, batch 2, 16 filters) unless the config says otherwise;
each step is forward + Dice loss + backward + Adam step, synchronised before the clock stops.
The seed's formulation (hand-written GroupNorm3D, DataParallel) runs in fp32 beside them.

    .venv/bin/python benchmarks/bench_gpu.py --result /tmp/gpu.json
"""

from __future__ import annotations

import time

from common import log, ratio, section_main, summarize


def run(config: dict) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"status": "not measured", "reason": "no CUDA GPU visible to PyTorch on this machine"}
    from labkit.profiles import get_profile

    settings = get_profile("gpu").vnet
    quick = bool(config.get("quick"))
    size = tuple(config.get("size", (32, 32, 32) if quick else settings.image_size))
    batch_size = int(config.get("batch_size", settings.batch_size))
    repeats = int(config.get("repeats", 3 if quick else 10))
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    image = torch.randn(batch_size, 2, *size, device=device)
    label = (torch.rand(batch_size, 1, *size, device=device) > 0.7).float()
    variants, lab_source = _variants(settings.base_filters, device)
    rows = {}
    for name, (net, amp, channels_last) in variants.items():
        log(f"gpu: {name}")
        rows[name] = _measure(net, image, label, amp, channels_last, repeats)
        rows[name]["parameters"] = sum(p.numel() for p in net.parameters())
        del net
        torch.cuda.empty_cache()
    fp32 = rows.get("lab_fp32")
    return {
        "device": torch.cuda.get_device_name(0), "size": list(size), "batch_size": batch_size,
        "base_filters": settings.base_filters, "repeats": repeats, "lab_source": lab_source,
        "amp_dtype": str(_amp_dtype()).replace("torch.", ""), "networks": rows,
        "speedup_vs_lab_fp32": {name: ratio(fp32, row) for name, row in rows.items()} if fp32 else {},
        "speedup_vs_seed": {name: ratio(rows["seed_fp32"], row) for name, row in rows.items()},
    }


def _amp_dtype():
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _variants(base_filters: int, device) -> tuple[dict, str]:
    import torch
    from seed_reference import build_seed_vnet

    from labkit.labs.vnet import VNet

    variants = {"seed_fp32": (build_seed_vnet(n_filters=base_filters).to(device), False, False)}
    for name, amp, channels_last in (("lab_fp32", False, False), ("lab_amp", True, False),
                                     ("lab_amp_channels_last_3d", True, True)):
        net = VNet(2, 1, base_filters).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        variants[name] = (net, amp, channels_last)
    return variants, "labkit/labs/vnet.py"


def _measure(net, image, label, amp: bool, channels_last: bool, repeats: int) -> dict:
    import torch
    from seed_reference import seed_dice_loss

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    dtype = _amp_dtype()
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            logits = net(image)
        loss = seed_dice_loss(torch.sigmoid(logits.float()), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # cudnn autotuning, allocator
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    row = summarize(times)
    row["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    row["samples_per_s"] = round(image.shape[0] / row["median_s"], 3)
    return row


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
