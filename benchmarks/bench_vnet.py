"""Lab 1 network: the lab's V-Net vs the seed's formulation vs MONAI's VNet, one CPU step each.

A training step is forward + Dice loss + backward + Adam step on one random batch, the same
tensors for every network, interleaved. Reported: seconds per step (min / median), samples per
second, parameters, peak resident memory during the step. ``seed_nn_groupnorm`` is the seed's
network with only its hand-written group normalisation replaced by ``nn.GroupNorm``: it shows
what that one layer costs.

    .venv/bin/python benchmarks/bench_vnet.py --result /tmp/vnet.json --config '{"repeats": 2}'
"""

from __future__ import annotations

from common import compare, log, ratio, section_main, speed_target

TARGET = 1.5  # lab V-Net throughput / seed formulation throughput, on CPU


def run(config: dict) -> dict:
    import torch

    quick = bool(config.get("quick"))
    size = tuple(config.get("size", (16, 16, 16) if quick else (128, 128, 64)))
    batch_size = int(config.get("batch_size", 2 if quick else 1))  # MONAI's BatchNorm needs 2 at 16^3
    base_filters = int(config.get("base_filters", 16))
    repeats = int(config.get("repeats", 2))
    torch.manual_seed(0)
    nets, lab_source = build_networks(base_filters, include_monai=True)
    image = torch.randn(batch_size, 2, *size)
    label = (torch.rand(batch_size, 1, *size) > 0.7).float()
    log(f"vnet: {', '.join(nets)} at {size}, batch {batch_size}, {torch.get_num_threads()} threads")
    steps = {name: training_step(net) for name, net in nets.items()}
    _warm_up(steps)
    timings = compare({name: (lambda step=step: step(image, label)) for name, step in steps.items()},
                      repeats=repeats, warmup=0)
    rows = {}
    for name, net in nets.items():
        rows[name] = dict(timings[name], parameters=sum(p.numel() for p in net.parameters()),
                          samples_per_s=round(batch_size / timings[name]["median_s"], 4))
    return {
        "device": "cpu", "threads": torch.get_num_threads(), "size": list(size),
        "batch_size": batch_size, "base_filters": base_filters, "repeats": repeats,
        "lab_source": lab_source, "networks": rows,
        "speedup_vs_seed": {name: ratio(rows["seed"], row) for name, row in rows.items() if name != "seed"},
        "targets": [speed_target(f"lab V-Net vs seed formulation, CPU step at {'x'.join(map(str, size))}",
                                 rows["seed"], rows.get("lab"), TARGET)],
    }


def build_networks(base_filters: int, include_monai: bool = True) -> tuple[dict, str]:
    """``({name: net}, where the lab's code came from)``."""
    from seed_reference import build_seed_vnet

    from labkit.labs.vnet import VNet

    nets = {"seed": build_seed_vnet(n_filters=base_filters),
            "seed_nn_groupnorm": build_seed_vnet(n_filters=base_filters, hand_written_norm=False),
            "lab": VNet(2, 1, base_filters, "groupnorm")}
    lab_source = "labkit/labs/vnet.py"
    if include_monai:
        from monai.networks.nets import VNet as MonaiVNet

        nets["monai"] = MonaiVNet(spatial_dims=3, in_channels=2, out_channels=1)
    for net in nets.values():
        net.train()
    return nets, lab_source


def training_step(net):
    """A callable ``step(image, label)``: one forward + backward + Adam step of ``net``."""
    import torch
    from seed_reference import seed_dice_loss

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(image, label):
        optimizer.zero_grad(set_to_none=True)
        loss = seed_dice_loss(torch.sigmoid(net(image)), label)
        loss.backward()
        optimizer.step()

    return step


def _warm_up(steps: dict) -> None:
    """One small untimed step per network (optimiser state, kernels) at a fraction of the cost
    of a full-size step."""
    import torch

    image = torch.randn(2, 2, 16, 16, 16)
    label = torch.zeros(2, 1, 16, 16, 16)
    for step in steps.values():
        step(image, label)


if __name__ == "__main__":
    raise SystemExit(section_main(run, __doc__.splitlines()[0]))
